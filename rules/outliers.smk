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
        # with torch: the search on a GPU (outliers.device), the widening on the CPU
        "../envs/neighbors.yaml"
    threads: 2
    resources:
        gpu=SEARCH_GPU,
    params:
        **search_device_params(),
        outliers=outlier_settings(),
        seed=config["seed"],
    script:
        "../scripts/outliers.py"
