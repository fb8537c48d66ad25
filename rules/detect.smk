rule detect:
    input:
        model=detector_model_input,
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
        gpu=detector_gpu(),
    params:
        manifest=shard_manifest,
        detector=detector_settings(),
        images=tracked("images"),
        device=config["device"],
    script:
        "../scripts/detect.py"


# The vocabulary, for the COCO categories: reruns when the model files (its inputs) or
# the settings that change the vocabulary (its params: an open-vocabulary detector's
# prompts; none for YOLO weights, which hold it) change.
rule detector_classes:
    input:
        model=detector_model_input,
    output:
        f"{RESULTS}/tables/detector_classes.json",
    log:
        f"{RESULTS}/logs/detector_classes.log",
    conda:
        "../envs/vision.yaml"
    params:
        **detector_vocabulary_settings(),
    script:
        "../scripts/detector_classes.py"
