"""The ``embedder`` text encoder: the text tower of the configured embedder (as the original).

``concepts.text_encoder: embedder`` (or ``clip``, its name before there was a
choice of embedder) embeds captions and concepts with the text tower of the
model that ``embedder`` configures, in the space its image embeddings share:
every open_clip model, and a transformers CLIP, SigLIP or SigLIP2 folder. An
embedder without one (a DINOv2 folder) is a configuration error at start that
says what to set instead. It loads the embedder's files (the analyse_concepts
rule's inputs) at precision ``auto`` (fp16 on a GPU, fp32 on the CPU), whatever
``embedder.precision`` is.
"""

from __future__ import annotations

from rare_objects.backends import embedders
from rare_objects.backends.text_encoders import TextEncoder, register

NAME = "embedder"


def _family(config: dict) -> tuple[embedders.Embedder, dict]:
    return embedders.get(config["embedder"]["backend"]), embedders.settings(config)


def _problems(value: str, config: dict) -> list[str]:
    family, settings = _family(config)
    if family.has_text_tower(settings):
        return []
    loaded = ", ".join(path.path for path in family.model_paths(settings)) or family.name
    return [
        f"concepts.text_encoder: {value!r} embeds texts with the embedder's text tower, but "
        f"the {family.name} embedder ({loaded}) has none; set concepts.text_encoder to "
        "minilm (the bundled sentence-transformers model) or a sentence-transformers model "
        "folder, or choose an embedder with a text tower (open_clip, or a CLIP or SigLIP folder)"
    ]


def _load(value: str, config: dict, device: str):
    family, settings = _family(config)
    return family.load(settings, device, "auto")


register(
    TextEncoder(
        name=NAME,
        aliases=("clip",),
        load=_load,
        model_paths=lambda value, config: _family(config)[0].model_paths(_family(config)[1]),
        problems=_problems,
    )
)
