rule detect:
    input:
        weights=config["detector"]["weights"],
    output:
        detections=f"{RESULTS}/tables/detections/{{shard}}.parquet",
        images=f"{RESULTS}/tables/images/{{shard}}.parquet",
        rejects=f"{RESULTS}/tables/rejects/{{shard}}.parquet",
    log:
        f"{RESULTS}/logs/detect/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/detect/{{shard}}.tsv"
    conda:
        "../envs/vision.yaml"
    threads: 2
    resources:
        gpu=GPU,
    params:
        manifest=shard_manifest,
        detector=tracked("detector"),
        images=tracked("images"),
        device=config["device"],
    script:
        "../scripts/detect.py"


rule detector_classes:
    input:
        weights=config["detector"]["weights"],
    output:
        f"{RESULTS}/tables/detector_classes.json",
    log:
        f"{RESULTS}/logs/detector_classes.log",
    conda:
        "../envs/vision.yaml"
    script:
        "../scripts/detector_classes.py"
