"""Nearest-neighbour search over the embeddings (:mod:`rare_objects.neighbors.search`): a
service, not a stage. The outlier detectors (:mod:`rare_objects.backends.outlier_detectors`)
and the diversity filter (:mod:`rare_objects.stages.diversity`) both call it."""
