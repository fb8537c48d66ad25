"""Rule evaluation_scores: every detector of evaluation.detectors, each as the outliers stage
would run it alone (on all objects and per class), so that one run compares them."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import schemas  # noqa: E402
from rare_objects.stages.outliers import class_aware_outliers, read_objects  # noqa: E402

# outliers.device is a param only off the CPU (rules/common.smk: search_device_params)
outliers = {
    **snakemake.params.outliers,
    "device": getattr(snakemake.params, "search_device", "cpu"),
}
object_ids, matrix, class_names = read_objects(
    snakemake.input.embeddings, snakemake.input.detections
)
frame = pd.DataFrame({"object_id": object_ids, "class_name": class_names})
for name in snakemake.params.detectors:
    found = class_aware_outliers(
        matrix,
        class_names,  # as read_objects gives them (the outliers rule passes the same)
        {**outliers, "detectors": [name]},
        seed=snakemake.params.seed,
    )
    frame[f"score_global_{name}"] = found["score_global"].to_numpy()
    frame[f"score_class_{name}"] = found["score_class"].astype("float64").to_numpy()
    frame[f"is_outlier_{name}"] = found["is_outlier"].to_numpy()
    log.info("%s: %d outliers of %d objects", name, int(found["is_outlier"].sum()), len(found))
    del found  # before the next detector's run, not after it
schemas.write_table(
    frame, schemas.evaluation_scores_schema(snakemake.params.detectors), snakemake.output[0]
)
