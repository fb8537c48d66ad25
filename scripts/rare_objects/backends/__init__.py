"""Pluggable parts, each a registry from the name in the config to one module: captioning (caption
backends) and outlier_detectors. Adding one is its module plus its section in the config schema."""
