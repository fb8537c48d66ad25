rule caption:
    input:
        selection=f"{RESULTS}/tables/selection.parquet",
        model=vlm_model_input,
    output:
        f"{RESULTS}/tables/captions/part-{{part}}.parquet",
    log:
        f"{RESULTS}/logs/caption/part-{{part}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption/part-{{part}}.tsv"
    conda:
        "../envs/vision.yaml"
    threads: 2
    resources:
        gpu=caption_gpu(),
    params:
        captions=caption_settings(),
        images=tracked("images"),
        device=config["device"],
    script:
        "../scripts/caption.py"


rule analyse_concepts:
    input:
        captions=expand(
            f"{RESULTS}/tables/captions/part-{{part}}.parquet", part=CAPTION_PARTS
        ),
        encoder=text_encoder_input,
    output:
        f"{RESULTS}/tables/concepts.parquet",
    log:
        f"{RESULTS}/logs/analyse_concepts.log",
    benchmark:
        f"{RESULTS}/benchmarks/analyse_concepts.tsv"
    conda:
        "../envs/vision.yaml"
    threads: 2
    params:
        concepts=config["concepts"],
        # what the embedder loads, for its text tower (rare_objects.backends.text_encoders)
        embedder_model=EMBEDDER_MODEL,
        embedder_weights=EMBEDDER_WEIGHTS,
        device=config["device"],
    script:
        "../scripts/analyse_concepts.py"
