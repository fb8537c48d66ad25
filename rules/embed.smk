rule embed:
    input:
        detections=f"{RESULTS}/tables/detections/{{shard}}.parquet",
        # the files the embedder loads (rare_objects.backends.embedders): a folder with each file
        model=embedder_input,
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
        gpu=embedder_gpu(),
    params:
        # what changes the embeddings; the script resolves the same from the config
        model=EMBEDDER_MODEL,
        pretrained=EMBEDDER_WEIGHTS,
        embedder=embedder_settings(),
        images=tracked("images"),
        device=config["device"],
    script:
        "../scripts/embed.py"
