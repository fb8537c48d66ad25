rule embed:
    input:
        detections=f"{RESULTS}/tables/detections/{{shard}}.parquet",
        checkpoint=clip_checkpoint,
    output:
        f"{RESULTS}/tables/embeddings/{{shard}}.parquet",
    log:
        f"{RESULTS}/logs/embed/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{shard}}.tsv"
    conda:
        "../envs/vision.yaml"
    threads: 2
    resources:
        gpu=GPU,
    params:
        model=CLIP_MODEL,
        pretrained=CLIP_PRETRAINED,
        embedder=tracked("embedder"),
        images=tracked("images"),
        device=config["device"],
    script:
        "../scripts/embed.py"
