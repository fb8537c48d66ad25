"""Pluggable parts, each a registry from the name in the config to one module: captioning (caption
backends), outlier_detectors, embedders (image embedders) and text_encoders (the concepts' text
encoder). Adding one is its module plus its section in the config schema."""
