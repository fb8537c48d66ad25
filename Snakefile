# rare-object-mining: find rare and anomalous objects in driving-camera images.
#
#   images -> detect (per shard) -> embed (per shard) -> outliers (LOF)
#          -> select_objects (targets + diversity) -> caption (per partition)
#          -> analyse_concepts -> export_results, write_timing
#          -> projection (tsne.png, the explorer's map), explorer, report_galleries, report_overview (rules/report.smk)
#          -> ground_truth, evaluation_scores, evaluate (rules/evaluation.smk, when enabled)


from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/detect.smk"
include: "rules/embed.smk"
include: "rules/outliers.smk"
include: "rules/select.smk"
include: "rules/captions.smk"
include: "rules/export.smk"
include: "rules/training_selection.smk"
include: "rules/report.smk"


if config["evaluation"]["enabled"]:

    include: "rules/evaluation.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
