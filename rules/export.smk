from rare_objects.export.json_writers import target_results_name


rule export_results:
    input:
        unpack(export_inputs),
        training_selection=f"{RESULTS}/tables/training_selection_summary.json",
        detector_classes=f"{RESULTS}/tables/detector_classes.json",
    output:
        results=f"{RESULTS}/detection_results.json",
        statistics=f"{RESULTS}/statistics.json",
        rejects=f"{RESULTS}/rejected_images.csv",
        target_results=[
            f"{RESULTS}/{target_results_name(target)}" for target in config["targets"]
        ],
        tree=directory(expand(f"{RESULTS}/{{folder}}", folder=EXPORT_FOLDERS)),
        coco=f"{RESULTS}/coco_detections.json",
    log:
        f"{RESULTS}/logs/export_results.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_results.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        targets=config["targets"],
        export=config["export"],
        max_images=config["input"]["max_images"],
        images=tracked("images"),
        seed=config["seed"],
        input_path=config["input"]["path"],
    script:
        "../scripts/export_results.py"


rule write_timing:
    input:
        timing_benchmarks,
    output:
        f"{RESULTS}/timing.txt",
    log:
        f"{RESULTS}/logs/write_timing.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/write_timing.py"
