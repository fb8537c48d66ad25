# The evaluation against ground truth (evaluation.enabled): the ground-truth boxes on the
# run's images, every evaluated outlier detector's scores, and the measures.


rule ground_truth:
    input:
        files=ground_truth_files,
        images=per_shard(f"{RESULTS}/tables/images/{{shard}}.parquet"),
    output:
        table=f"{RESULTS}/tables/ground_truth.parquet",
        stats=f"{RESULTS}/tables/ground_truth_stats.json",
    log:
        f"{RESULTS}/logs/ground_truth.log",
    benchmark:
        f"{RESULTS}/benchmarks/ground_truth.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        # only what the ground truth depends on: a measure's setting reruns evaluate alone
        evaluation={key: config["evaluation"][key] for key in GROUND_TRUTH_KEYS},
        input=config["input"],
    script:
        "../scripts/ground_truth.py"


rule evaluation_scores:
    input:
        embeddings=per_shard(f"{RESULTS}/tables/embeddings/{{shard}}.parquet"),
        detections=per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
    output:
        f"{RESULTS}/tables/evaluation_scores.parquet",
    log:
        f"{RESULTS}/logs/evaluation_scores.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluation_scores.tsv"
    conda:
        # with torch: the search on a GPU (outliers.device), the widening on the CPU
        "../envs/neighbors.yaml"
    threads: 2
    resources:
        gpu=SEARCH_GPU,
    params:
        **search_device_params(),
        outliers=outlier_settings(),
        detectors=config["evaluation"]["detectors"],
        seed=config["seed"],
    script:
        "../scripts/evaluation_scores.py"


rule evaluate:
    input:
        truth=f"{RESULTS}/tables/ground_truth.parquet",
        truth_stats=f"{RESULTS}/tables/ground_truth_stats.json",
        scores=f"{RESULTS}/tables/evaluation_scores.parquet",
        images=per_shard(f"{RESULTS}/tables/images/{{shard}}.parquet"),
        detections=per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
        outliers=f"{RESULTS}/tables/outliers.parquet",
        selection=f"{RESULTS}/tables/selection.parquet",
        captions=expand(
            f"{RESULTS}/tables/captions/part-{{part}}.parquet", part=CAPTION_PARTS
        ),
        concepts=f"{RESULTS}/tables/concepts.parquet",
        training_selection=f"{RESULTS}/training_selection.parquet",
        training_summary=f"{RESULTS}/tables/training_selection_summary.json",
    output:
        json=f"{RESULTS}/evaluation.json",
        objects=f"{RESULTS}/tables/evaluation_objects.parquet",
        plot=report(
            f"{RESULTS}/evaluation.png",
            caption="../report/evaluation.rst",
            category="6. Evaluation",
            labels={"figure": "evaluation"},
        ),
        html=report(
            f"{RESULTS}/report/evaluation.html",
            caption="../report/evaluation.rst",
            category="6. Evaluation",
            labels={"figure": "tables"},
        ),
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        evaluation=config["evaluation"],
        concepts=config["concepts"],
        targets=config["targets"],
        input_kind=config["input"]["kind"],
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
