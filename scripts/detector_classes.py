"""Rule detector_classes: the detector's whole class vocabulary, for the COCO categories."""

import json
from pathlib import Path

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects import models  # noqa: E402

names = models.detector_classes(models.load_detector(snakemake.input.weights))
out = Path(snakemake.output[0])
tmp = out.with_name(out.name + ".tmp")
tmp.write_text(json.dumps({str(i): name for i, name in sorted(names.items())}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
tmp.replace(out)
log.info("detector %s: %d classes", snakemake.input.weights, len(names))
