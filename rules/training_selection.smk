import re

from rare_objects.export import mmdet3d as mmdet3d_export

MMDET3D_PROBLEMS = mmdet3d_export.config_problems(config)
if MMDET3D_PROBLEMS:
    raise config_checks.ConfigError(
        f"invalid configuration ({len(MMDET3D_PROBLEMS)} problem(s)):\n"
        + "\n".join(f"  - {p}" for p in MMDET3D_PROBLEMS)
    )
# Output file name (made safe, unique) -> MMDetection3D info file, from the configuration.
MMDET3D_INFOS = mmdet3d_export.info_outputs(
    config["training_selection"]["mmdet3d_infos"]
)
RUN_WILDCARDS["mmdet3d_info"] = list(MMDET3D_INFOS)
# The filtered info files of the run (in final_outputs; none when mmdet3d_infos is []).
MMDET3D_OUTPUTS = [f"{RESULTS}/training_selection/{name}" for name in MMDET3D_INFOS]


rule training_selection:
    input:
        images=per_shard(f"{RESULTS}/tables/images/{{shard}}.parquet"),
        detections=per_shard(f"{RESULTS}/tables/detections/{{shard}}.parquet"),
        outliers=f"{RESULTS}/tables/outliers.parquet",
        concepts=f"{RESULTS}/tables/concepts.parquet",
    output:
        table=f"{RESULTS}/training_selection.parquet",
        csv=f"{RESULTS}/training_selection.csv",
        summary=f"{RESULTS}/tables/training_selection_summary.json",
    log:
        f"{RESULTS}/logs/training_selection.log",
    benchmark:
        f"{RESULTS}/benchmarks/training_selection.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        # the info files are the hand-off's, not the selection's: listing one more
        # must not rerun the selection and everything after it
        settings={
            k: v
            for k, v in config["training_selection"].items()
            if k != "mmdet3d_infos"
        },
        targets=config["targets"],
        input_kind=config["input"]["kind"],
        seed=config["seed"],
    script:
        "../scripts/training_selection.py"


rule mmdet3d_infos:
    input:
        selection=f"{RESULTS}/training_selection.parquet",
        info=lambda wildcards: MMDET3D_INFOS[wildcards.mmdet3d_info],
    output:
        info=f"{RESULTS}/training_selection/{{mmdet3d_info}}",
    log:
        f"{RESULTS}/logs/mmdet3d_infos/{{mmdet3d_info}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mmdet3d_infos/{{mmdet3d_info}}.tsv"
    wildcard_constraints:
        # exactly the configured names (never a path: they are safe names)
        mmdet3d_info="|".join(map(re.escape, MMDET3D_INFOS)) or "(?!)",
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/mmdet3d_infos.py"
