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


rule tsne_plot:
    input:
        embeddings=per_shard(f"{RESULTS}/tables/embeddings/{{shard}}.parquet"),
        outliers=f"{RESULTS}/tables/outliers.parquet",
    output:
        report(
            f"{RESULTS}/tsne.png",
            caption="../report/tsne.rst",
            category="1. Overview",
            labels={"figure": "t-SNE"},
        ),
    log:
        f"{RESULTS}/logs/tsne_plot.log",
    benchmark:
        f"{RESULTS}/benchmarks/tsne_plot.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        tsne=config["tsne"],
        seed=config["seed"],
    script:
        "../scripts/tsne_plot.py"
