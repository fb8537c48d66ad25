"""Rule evaluate: the run's results against the ground truth (evaluation.json, the report's
evaluation table and figure, one row per ground-truth object)."""

import json

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.evaluation import stage  # noqa: E402
from rare_objects.io import atomic, schemas  # noqa: E402
from rare_objects.report import evaluation as report_evaluation  # noqa: E402
from rare_objects.report import gallery  # noqa: E402
from rare_objects.stages.training_selection import sample_column  # noqa: E402

settings = snakemake.params.evaluation
key = sample_column(snakemake.params.input_kind)
truth_stats = json.loads(open(snakemake.input.truth_stats, encoding="utf-8").read())
truth = pd.read_parquet(snakemake.input.truth)
images = schemas.read_parts(snakemake.input.images, list({"image_path", "status", key}))
tables = stage.read_tables(
    snakemake.input.outliers,
    snakemake.input.selection,
    snakemake.input.captions,
    snakemake.input.concepts,
)
scores = pd.read_parquet(snakemake.input.scores)
chosen = set(pd.read_parquet(snakemake.input.training_selection, columns=["sample"])["sample"])
summary = json.loads(open(snakemake.input.training_summary, encoding="utf-8").read())
concept_of = stage.concept_names(
    sorted(set(truth["category"])),
    settings["category_concepts"],
    snakemake.params.concepts["list"],
    settings["source"],
)
report, objects = stage.evaluate(
    truth,
    images,
    snakemake.input.detections,
    tables,
    scores,
    (chosen, summary),
    settings,
    truth_stats["rare_categories"],
    snakemake.params.targets,
    concept_of,
    key,
    snakemake.params.seed,
)
report = {"source": settings["source"], "ground_truth": truth_stats, **report}
entries = list(stage.detector_entries(settings["detectors"], settings["combinations"]))
schemas.write_table(objects, schemas.evaluation_objects_schema(entries), snakemake.output.objects)
atomic.write_text(snakemake.output.json, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
report_evaluation.plot(report, snakemake.output.plot)
atomic.write_text(
    snakemake.output.html,
    gallery.html_tables(
        "Evaluation against the ground truth",
        report_evaluation.frames(report),
        report["summary"],
    ),
)
log.info("evaluation: %s", report["summary"])
