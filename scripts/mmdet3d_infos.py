"""Rule mmdet3d_infos: one MMDetection3D nuScenes info file cut down to the training selection."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.export import mmdet3d  # noqa: E402

tokens = mmdet3d.selected_tokens(snakemake.input.selection)
counts = mmdet3d.filter_info_file(snakemake.input.info, tokens, snakemake.output.info)
line = mmdet3d.describe(snakemake.input.info, counts)
# Selected samples missing from the file are expected for another split (val samples are
# not in the train infos) but none kept at all is more likely the wrong file.
if counts["missing"] or not counts["kept"]:
    log.warning("%s", line)
else:
    log.info("%s", line)
log.info("wrote %s (pickle protocol %d)", snakemake.output.info, counts["protocol"])
