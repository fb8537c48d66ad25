"""rare_objects: the logic of the rare-object-mining workflow.

Plain functions over plain data (paths, DataFrames, numpy arrays). The rule
scripts in ``scripts/`` are thin adapters that call into this package.
"""

__version__ = "0.1.0"
