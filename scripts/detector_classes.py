"""Rule detector_classes: the detector's whole class vocabulary, for the COCO categories."""

import json

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import atomic  # noqa: E402
from rare_objects.runtime import models  # noqa: E402

names = models.detector_classes(models.load_detector(snakemake.input.weights))
atomic.write_text(
    snakemake.output[0],
    json.dumps({str(i): name for i, name in sorted(names.items())}, ensure_ascii=False, indent=1)
    + "\n",
)
log.info("detector %s: %d classes", snakemake.input.weights, len(names))
