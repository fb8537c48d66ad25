"""Rule detector_classes: the detector's whole class vocabulary, for the COCO categories."""

import json

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.backends import object_detectors  # noqa: E402
from rare_objects.io import atomic  # noqa: E402

# the settings that change the vocabulary are the params (the model files are the inputs)
settings = {**snakemake.config["detector"], **dict(snakemake.params.items())}
backend = object_detectors.get(settings["backend"])
names = backend.classes(settings)
atomic.write_text(
    snakemake.output[0],
    json.dumps({str(i): name for i, name in sorted(names.items())}, ensure_ascii=False, indent=1)
    + "\n",
)
log.info("%s detector %s: %d classes", backend.name, snakemake.input[0], len(names))
