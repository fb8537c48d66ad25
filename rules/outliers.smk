rule outliers:
    input:
        embeddings=per_shard(f"{RESULTS}/tables/embeddings/{{shard}}.parquet"),
        detections=per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
    output:
        f"{RESULTS}/tables/outliers.parquet",
    log:
        f"{RESULTS}/logs/outliers.log",
    benchmark:
        f"{RESULTS}/benchmarks/outliers.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        outliers=config["outliers"],
        seed=config["seed"],
    script:
        "../scripts/outliers.py"
