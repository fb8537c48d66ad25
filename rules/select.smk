rule select_objects:
    input:
        embeddings=per_shard(f"{RESULTS}/tables/embeddings/{{shard}}.parquet"),
        detections=per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
        outliers=f"{RESULTS}/tables/outliers.parquet",
    output:
        f"{RESULTS}/tables/selection.parquet",
    log:
        f"{RESULTS}/logs/select_objects.log",
    benchmark:
        f"{RESULTS}/benchmarks/select_objects.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        targets=config["targets"],
        selection=config["selection"],
        vlm_for=config["captions"]["vlm_for"],
        partitions=config["captions"]["partitions"],
        exact_max=config["outliers"]["exact_max_samples"],
        seed=config["seed"],
    script:
        "../scripts/select_objects.py"
