# The bundled demo's tiny models, built once from configs and cached as files.
# A real run points detector.weights / embedder / captions at real weights and
# never triggers these rules. The VLM's `build` param is its build version: bumping
# it in the package rebuilds a cached model.

from rare_objects.demo.tiny_vlm import VLM_BUILD_VERSION


rule build_demo_detector:
    output:
        DEMO_MODELS["detector"],
    log:
        f"{DEMO_DIR}/logs/build_demo_detector.log",
    benchmark:
        f"{DEMO_DIR}/benchmarks/build_demo_detector.tsv"
    conda:
        "../envs/vision.yaml"
    threads: 2
    params:
        seed=config["seed"],
        epochs=config["demo"]["detector_epochs"],
        work_dir=f"{DEMO_DIR}/detector-training",
    script:
        "../scripts/build_demo_detector.py"


rule build_demo_clip:
    output:
        DEMO_MODELS["clip"],
    log:
        f"{DEMO_DIR}/logs/build_demo_clip.log",
    benchmark:
        f"{DEMO_DIR}/benchmarks/build_demo_clip.tsv"
    conda:
        "../envs/vision.yaml"
    # One thread, as build_demo_vlm: the two tiny models build side by side on two cores.
    threads: 1
    params:
        seed=config["seed"],
    script:
        "../scripts/build_demo_clip.py"


rule build_demo_vlm:
    output:
        directory(DEMO_MODELS["vlm"]),
    log:
        f"{DEMO_DIR}/logs/build_demo_vlm.log",
    benchmark:
        f"{DEMO_DIR}/benchmarks/build_demo_vlm.tsv"
    conda:
        "../envs/vision.yaml"
    # One thread: faster than two for a model this small, and the same weights on any machine.
    threads: 1
    params:
        build=VLM_BUILD_VERSION,
        seed=config["seed"],
        train_steps=config["demo"]["vlm_train_steps"],
    script:
        "../scripts/build_demo_vlm.py"
