"""Keep every library offline and its caches inside the project.

Call :func:`configure` before importing ultralytics, open_clip, transformers or
matplotlib: several of them read these variables at import time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path


def cache_dir_for(config: dict) -> Path:
    """The folder for library settings and caches of a run: the one place for its default.

    ``cache_dir`` from the (validated) config; when null, ``$RARE_OBJECTS_CACHE`` (so a
    cluster job can point it at node-local scratch), else ``<results>/../.cache``.
    """
    if config["cache_dir"]:
        return Path(config["cache_dir"])
    fallback = Path(config["results"]).parent / ".cache"
    return Path(os.environ.get("RARE_OBJECTS_CACHE", fallback))


def configure(cache_dir: str | os.PathLike) -> Path:
    """Set the environment so that nothing is downloaded at run time; caches go to ``cache_dir``.

    Returns the cache folder used. Variables the user already set are kept.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    defaults = {
        # ultralytics: no DNS look-ups, no pip auto-installs, settings.json in our cache
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_VERBOSE": "false",
        "YOLO_CONFIG_DIR": str(cache / "ultralytics"),
        # Hugging Face: local files only
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(cache / "huggingface"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
        # numba (umap-learn, pynndescent) compiles to a cache of its own
        "NUMBA_CACHE_DIR": str(cache / "numba"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    for key in ("YOLO_CONFIG_DIR", "HF_HOME", "MPLCONFIGDIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    _provide_ultralytics_font(Path(os.environ["YOLO_CONFIG_DIR"]))
    return cache


def _provide_ultralytics_font(config_dir: Path) -> None:
    """ultralytics fetches Arial.ttf from the web when it plots; give it a local TTF.

    matplotlib's DejaVu Sans is found without importing matplotlib (a quarter of a
    second), because every rule script comes through here, caption jobs included.
    """
    target = config_dir / "Ultralytics" / "Arial.ttf"
    if target.exists():
        return
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return  # matplotlib absent: ultralytics will only warn when plotting
    package = Path(next(iter(spec.submodule_search_locations)))
    source = package / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if source.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
