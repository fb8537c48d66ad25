"""rare_objects: the logic of the rare-object-mining workflow.

Plain functions over plain data (paths, DataFrames, numpy arrays). The rule
scripts in ``scripts/`` are thin adapters that call into this package. Its folders:

- ``stages``: what each stage of the DAG computes, in pipeline order;
- ``backends``: the pluggable parts, each a registry from a config name to one module
  (caption backends, outlier detectors);
- ``export``: the results tree, written by one streaming pass that feeds writers;
- ``report``: what people look at (the map, the report's galleries, the explorer, timing);
- ``io``: images, parquet tables, embeddings, inputs, atomic writes, safe names;
- ``runtime``: what every rule script shares (config, logging, offline caches, models, devices);
- ``demo``: the bundled demo and the test data generators (no stage imports them).
"""

__version__ = "0.1.0"
