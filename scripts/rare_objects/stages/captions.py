"""Caption the selected objects: VLM captions for the chosen crops, simple ones for the rest.

As the original's ``generate_descriptions_batch``: objects outside the targets
get a simple caption built from the detector's answer (:func:`simple_caption`);
the others are cropped from their image and sent to a vision-language model.
A failure on one object is recorded on its row (``description`` null, ``error``
set) and the job goes on; :func:`all_failed` tells the rule when every VLM call
failed, so that it can fail the job and a rerun retries.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any

import pandas as pd

from rare_objects.backends import captioning
from rare_objects.io import images as imgs
from rare_objects.io.schemas import CAPTIONS

_logger = logging.getLogger("rare_objects.stages.captions")

REQUIRED_COLUMNS = [
    "object_id",
    "image_path",
    "x1",
    "y1",
    "x2",
    "y2",
    "class_name",
    "confidence",
    "needs_vlm",
]


def read_partition(selection_path, part: int) -> pd.DataFrame:
    """The selected objects of caption partition ``part`` from the selection table, with
    the columns that captioning reads (:data:`REQUIRED_COLUMNS`), in the table's order.

    pyarrow drops the other partitions' rows and the other columns while it reads, so a
    caption job holds its own objects only, not every object of the run.
    """
    return pd.read_parquet(
        selection_path,
        columns=REQUIRED_COLUMNS,
        filters=[("selected", "==", True), ("caption_partition", "==", int(part))],
    ).reset_index(drop=True)


def simple_caption(class_name: str, confidence: float) -> str:
    """The caption of an object that is not sent to the VLM.

    Exactly ``"{A|An} {name} detected by YOLO with confidence {confidence:.2f}."``
    where ``name`` is the class name with underscores replaced by spaces and
    the article is "An" before a vowel letter (a, e, i, o, u), else "A", e.g.
    ``simple_caption("construction_vehicle", 0.8712)`` ->
    ``"A construction vehicle detected by YOLO with confidence 0.87."``.
    """
    name = str(class_name).replace("_", " ").strip()
    article = "An" if name[:1].lower() in "aeiou" and name else "A"
    return f"{article} {name} detected by YOLO with confidence {float(confidence):.2f}."


def _emit(log: Any, message: str) -> None:
    if log is None:
        _logger.info(message)
    elif hasattr(log, "info"):
        log.info(message)
    else:
        log(message)


def _pickles(value) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - any failure means: cannot travel to another process
        return False
    return True


def caption_objects(
    objects: pd.DataFrame,
    captioner,
    batch_size: int = 8,
    log: Callable[[str], None] | logging.Logger | None = None,
    progress_every: int = 50,
    open_image: Callable[[str], Any] = imgs.open_rgb,
    loader_workers: int = 2,
) -> pd.DataFrame:
    """Caption every row of ``objects``; returns a frame with the CAPTIONS columns, in input order.

    ``objects`` has the columns of :data:`REQUIRED_COLUMNS`; bbox is in original
    image pixels. Each image is opened once (rows are grouped by
    ``image_path``); crops of rows with ``needs_vlm`` go to ``captioner`` as one
    feed (:func:`rare_objects.backends.captioning.caption_stream`: its own
    rolling feed where it has one, else groups of ``batch_size``), so that a
    bounded number of crops is held in memory. With ``captioner=None`` (backend
    "none") every row gets a simple caption. An empty VLM answer counts as a
    failure. A progress line goes to ``log`` (a logger or a callable) every
    ``progress_every`` objects and at the end. ``open_image`` opens an image
    (the rule passes :func:`rare_objects.io.images.open_rgb` with the configured
    ``images`` limits) and ``loader_workers`` threads decode the next images
    ahead (0: in this thread). A captioner with ``takes_crop_sources`` (the openai
    backend) is given :class:`~rare_objects.io.images.CropSource` items instead and
    cuts the crops in its encoder processes, when ``open_image`` pickles (the rule's
    does); no image is then decoded in this process.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in objects.columns]
    if missing:
        raise ValueError(f"objects lack columns {missing}")
    n = len(objects)
    backend = getattr(captioner, "backend", None) if captioner is not None else None
    model = getattr(captioner, "model_name", None) if captioner is not None else None
    batch_size = max(1, int(batch_size))

    rows: list[dict | None] = [None] * n
    done = 0
    next_report = progress_every if progress_every else None

    def progress(k: int) -> None:
        nonlocal done, next_report
        done += k
        if next_report is not None and (done >= next_report or done == n):
            _emit(log, f"captions: {done}/{n} objects")
            while next_report is not None and next_report <= done:
                next_report += progress_every

    def vlm_row(i: int, description=None, error=None) -> None:
        rows[i] = {
            "object_id": ids[i],
            "caption_kind": "vlm",
            "description": description,
            "error": error,
            "backend": backend,
            "model": model,
        }

    ids = objects["object_id"].astype(str).tolist()
    needs = (
        objects["needs_vlm"].fillna(False).astype(bool).tolist()
        if captioner is not None
        else [False] * n
    )
    if captioner is None and bool(objects["needs_vlm"].fillna(False).any()):
        _emit(log, "captions: no VLM backend configured; every object gets a simple caption")
    classes = objects["class_name"].tolist()
    confs = objects["confidence"].tolist()

    # Simple captions need no image.
    n_simple = 0
    for i in range(n):
        if not needs[i]:
            rows[i] = {
                "object_id": ids[i],
                "caption_kind": "simple",
                "description": simple_caption(classes[i], confs[i]),
                "error": None,
                "backend": "simple",
                "model": None,
            }
            n_simple += 1
    if n_simple:
        progress(n_simple)

    def record(i: int, result) -> None:
        if isinstance(result, imgs.CropUnavailable):
            vlm_row(i, error=str(result))
        elif isinstance(result, BaseException):
            vlm_row(i, error=imgs.describe_error(result))
        elif not isinstance(result, str) or not result.strip():
            vlm_row(i, error="empty caption from the VLM")
        else:
            vlm_row(i, description=result.strip())
        progress(1)

    vlm_positions = [i for i in range(n) if needs[i]]

    paths = objects["image_path"].tolist()
    boxes = objects[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)

    def crop_sources():
        """(row, CropSource) of every VLM row, the rows of an image one after another in the
        order of its first row, for a captioner that cuts its crops where it encodes them
        (no image is decoded in this process)."""
        by_path: dict = {}
        for i in vlm_positions:
            by_path.setdefault(paths[i], []).append(i)
        for path, members in by_path.items():
            for i in members:
                yield i, imgs.CropSource(path, tuple(boxes[i].tolist()), open_image)

    def crops():
        """(row, crop) of every VLM row, each image decoded once, in threads that run ahead
        (the captioner reads this as it needs crops); a row whose image or crop fails gets
        its error here."""
        loaded = imgs.iter_image_rows(
            [paths[i] for i in vlm_positions],
            open_image,
            workers=loader_workers,
            catch=(Exception,),
        )
        for _, image, among_vlm in loaded:
            members = [vlm_positions[k] for k in among_vlm]
            if isinstance(image, BaseException):  # ImageRejected or an I/O error
                unavailable = str(imgs.CropUnavailable.unreadable(image))
                for i in members:
                    vlm_row(i, error=unavailable)
                progress(len(members))
                continue
            try:
                for i in members:
                    try:
                        crop = imgs.vlm_crop(image, tuple(boxes[i]))
                    except Exception as exc:  # noqa: BLE001
                        vlm_row(i, error=str(imgs.CropUnavailable.uncut(exc)))
                        progress(1)
                        continue
                    yield i, crop
            finally:
                close = getattr(image, "close", None)
                if close:
                    close()

    if vlm_positions:
        # One feed for the whole partition (captioning.caption_stream): the answers come back
        # in any order, each to its own row.
        # A captioner that encodes in worker processes cuts the crops there too (the openai
        # backend: the process holding the requests would otherwise spend about a third of
        # its CPU decoding images), when the opener can travel to those processes.
        sources = getattr(captioner, "takes_crop_sources", False) and _pickles(open_image)
        items = crop_sources() if sources else crops()
        for i, result in captioning.caption_stream(captioner, items, batch_size):
            record(i, result)

    frame = pd.DataFrame(rows, columns=CAPTIONS.names)
    n_vlm = len(vlm_positions)
    n_failed = int(frame.loc[frame["caption_kind"] == "vlm", "error"].notna().sum()) if n else 0
    _emit(log, f"captions: done, {n} objects ({n_vlm} VLM, {n_failed} failed; {n - n_vlm} simple)")
    return frame


def all_failed(frame: pd.DataFrame) -> bool:
    """True when there were VLM captions to make and every one of them failed."""
    if frame is None or len(frame) == 0:
        return False
    vlm = frame[frame["caption_kind"] == "vlm"]
    return len(vlm) > 0 and bool(vlm["error"].notna().all())
