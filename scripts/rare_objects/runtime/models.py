"""What every model loader shares (the models are loaded by the backends of
:mod:`rare_objects.backends`: object detectors, embedders, text encoders, caption
VLMs): which settings name local files, their start-up check and rule inputs.
Every model's device and dtype are resolved by :mod:`rare_objects.runtime.devices`.

Everything loads from local files through each library's own loading code;
:func:`rare_objects.runtime.offline.configure` must run first so nothing is fetched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Suffixes of weights files: a setting ending in one names a local file.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def is_local_path(value: str | os.PathLike | None) -> bool:
    """Whether a model setting names a local file or folder, not a name that a library
    resolves itself (an open_clip pretrained tag such as ``openai``; none holds a slash
    or a dot): it holds a path separator or has a file suffix. The one rule of the
    workflow (which files are rule inputs, which are checked at start) and the loaders."""
    if not value:
        return False
    text = os.fspath(value)
    return "/" in text or os.sep in text or bool(Path(text).suffix)


@dataclass(frozen=True)
class ModelPath:
    """A local model file or folder that the workflow loads, and the setting that names it."""

    key: str
    """The configuration key, as a user writes it (``detector.weights``)."""
    path: str
    kind: str | None = None
    """``file``, ``folder``, or None where either will do."""


def model_path_problems(paths, built=()) -> list[str]:
    """One line per entry of ``paths`` (:class:`ModelPath`) that is not there as the file
    or folder its setting needs, naming the key and the path.

    ``built`` are paths that a rule of the workflow builds (the demo's models): they may
    be missing, and that rule builds them. Models are only ever read from local files,
    so a missing one is a mistyped path or weights not yet copied, found at start
    rather than by the first job that loads them.
    """
    built = {os.path.normpath(os.fspath(path)) for path in built}
    problems = []
    for item in paths:
        path = Path(item.path)
        if not path.exists():
            if os.path.normpath(item.path) not in built:
                problems.append(
                    f"{item.key}: {item.path!r} does not exist (models are read from local "
                    "files only, never downloaded: see README, 'Real weights, offline')"
                )
        elif item.kind == "file" and not path.is_file():
            problems.append(f"{item.key}: {item.path!r} is not a file (a weights file is needed)")
        elif item.kind == "folder" and not path.is_dir():
            problems.append(f"{item.key}: {item.path!r} is not a folder (a model folder is needed)")
    return problems


def model_input_files(path: str | os.PathLike) -> list[str]:
    """A model's rule inputs: a file alone; a folder and every file below it.

    Snakemake compares a folder input by the folder's own modification time (or its
    ``.snakemake_timestamp``), which a file replaced or rewritten inside it does not
    change, so each file is an input too: replacing the weights in a model folder
    reruns its stage. Hidden files and folders (``.cache/``, ``.git/``, Snakemake's
    timestamp) are left out; nothing is hashed.
    """
    text = os.fspath(path)
    if not os.path.isdir(text):
        return [text]
    files = []
    for folder, subfolders, names in os.walk(text):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        files.extend(
            os.path.join(folder, name) for name in sorted(names) if not name.startswith(".")
        )
    return [text, *files]
