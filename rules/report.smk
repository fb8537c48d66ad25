# What people look at: the explorer (one HTML file, no server) and the files of the
# Snakemake report (`snakemake --report <results>/report.zip`): overview tables,
# capped crop galleries with labels, the rejected images.


rule projection:
    input:
        embeddings=per_shard(f"{RESULTS}/tables/embeddings/{{shard}}.parquet"),
        outliers=f"{RESULTS}/tables/outliers.parquet",
        concepts=f"{RESULTS}/tables/concepts.parquet",
    output:
        table=f"{RESULTS}/tables/projection.parquet",
        # the original's tsne.png: the same map as the explorer's (t-SNE, or UMAP with
        # projection.method umap), so the embeddings are projected once
        plot=report(
            f"{RESULTS}/tsne.png",
            caption="../report/projection.rst",
            category="1. Overview",
            labels={"figure": "map of the embeddings"},
        ),
    log:
        f"{RESULTS}/logs/projection.log",
    benchmark:
        f"{RESULTS}/benchmarks/projection.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        projection=config["projection"],
        targets=config["targets"],
        seed=config["seed"],
    script:
        "../scripts/projection.py"


rule explorer:
    input:
        projection=f"{RESULTS}/tables/projection.parquet",
        detections=per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
        outliers=f"{RESULTS}/tables/outliers.parquet",
        captions=expand(
            f"{RESULTS}/tables/captions/part-{{part}}.parquet", part=CAPTION_PARTS
        ),
        concepts=f"{RESULTS}/tables/concepts.parquet",
    output:
        html=f"{RESULTS}/explorer.html",
        sprites=directory(f"{RESULTS}/explorer_files"),
    log:
        f"{RESULTS}/logs/explorer.log",
    benchmark:
        f"{RESULTS}/benchmarks/explorer.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        explorer=config["explorer"],
        targets=config["targets"],
        images=tracked("images"),
    script:
        "../scripts/explorer.py"


rule report_galleries:
    input:
        detections=per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
        rejects=per_shard(f"{RESULTS}/tables/rejects/{{shard}}.parquet"),
        outliers=f"{RESULTS}/tables/outliers.parquet",
        captions=expand(
            f"{RESULTS}/tables/captions/part-{{part}}.parquet", part=CAPTION_PARTS
        ),
        concepts=f"{RESULTS}/tables/concepts.parquet",
    output:
        outliers=report(
            directory(f"{RESULTS}/report/outliers_by_class"),
            patterns=["{group}/{name}.jpg"],
            caption="../report/outliers_by_class.rst",
            category="2. Outliers per class",
            subcategory=gallery_group("outliers_by_class"),
            labels=gallery_labels("outliers_by_class"),
        ),
        final_outliers=report(
            directory(f"{RESULTS}/report/final_outliers_by_concept"),
            patterns=["{group}/{name}.jpg"],
            caption="../report/final_outliers_by_concept.rst",
            category="3. Final outliers per top concept",
            subcategory=gallery_group("final_outliers_by_concept"),
            labels=gallery_labels("final_outliers_by_concept"),
        ),
        targets=report(
            directory(f"{RESULTS}/report/targets"),
            patterns=["{group}/{name}.jpg"],
            caption="../report/targets.rst",
            category="4. Target classes",
            subcategory=gallery_group("targets"),
            labels=gallery_labels("targets"),
        ),
        index=f"{RESULTS}/report/galleries.json",
        rejected=report(
            f"{RESULTS}/report/rejected_images.html",
            caption="../report/rejected_images.rst",
            category="5. Rejected images",
            labels={"table": "rejected images"},
        ),
    log:
        f"{RESULTS}/logs/report_galleries.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_galleries.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        report=config["report"],
        targets=config["targets"],
        images=tracked("images"),
    script:
        "../scripts/report_galleries.py"


rule report_overview:
    input:
        statistics=f"{RESULTS}/statistics.json",
        benchmarks=overview_benchmarks,
    output:
        statistics=report(
            f"{RESULTS}/report/statistics.html",
            caption="../report/statistics.rst",
            category="1. Overview",
            labels={"figure": "statistics"},
        ),
        timing=report(
            f"{RESULTS}/report/timing.html",
            caption="../report/timing.rst",
            category="1. Overview",
            labels={"figure": "timing"},
        ),
    log:
        f"{RESULTS}/logs/report_overview.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_overview.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/report_overview.py"
