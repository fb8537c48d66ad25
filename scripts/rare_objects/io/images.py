"""The one place where the workflow reads, converts, crops and encodes images.

Every stage opens images with :func:`open_rgb` and cuts crops with
:func:`crop`, so "the image" and "the crop of a box" mean the same pixels in
detection, embedding, captioning and export. A file that cannot be used
raises :class:`ImageRejected` with a short reason code; the stages record it
and go on with the next image, so one bad file never stops a run.

Only PIL and numpy are needed.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import os
import stat
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485
"""PIL's own ``MAX_IMAGE_PIXELS``: about 89 Mpx, far above any camera frame."""

DEFAULT_MIN_SIDE = 8
"""Images with a side shorter than this hold no detectable object."""

BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels are composited onto (white, as a viewer shows them)."""

VLM_MAX_ASPECT_RATIO = 200
"""Longest side over shortest that a crop sent to a VLM may have. Qwen2-VL's processor
(local, or behind a server) refuses an image past 200:1, and a degenerate box (a
detector's zero-height box becomes a 1-pixel-high crop) gives one."""

REASONS: dict[str, str] = {
    "missing": "the file does not exist",
    "unreadable": "the file exists but cannot be read (permissions, I/O error, not a regular file)",
    "empty_file": "the file has zero bytes",
    "not_an_image": "PIL does not recognise the file as an image",
    "decompression_bomb": "the header claims more pixels than max_pixels",
    "too_small": "a side is shorter than min_side pixels",
    "truncated": "the pixel data ends early",
    "corrupt": "the pixel data cannot be decoded",
    "unsupported_mode": "the pixel format cannot be converted to RGB",
}
"""Every reason code :class:`ImageRejected` can carry, with its meaning."""

_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;16S"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SNAP = 1e-6


class ImageRejected(Exception):
    """An image that a stage cannot use, with a machine-readable ``reason`` (a key of REASONS).

    ``detail`` is the human explanation without the path; ``str()`` gives
    ``"path: reason: detail"`` so a log line says everything at once.
    """

    def __init__(self, path, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        self.path = os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(self.path, reason, detail)

    def __str__(self) -> str:
        head = f"{self.path}: {self.reason}"
        return f"{head}: {self.detail}" if self.detail else head


def _check_file(path) -> None:
    """Reject missing, unreadable and empty files before PIL sees them (PIL's errors say less)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageRejected(path, "missing", "no such file") from None
    except OSError as exc:
        raise ImageRejected(path, "unreadable", _os_error_text(exc)) from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(path, "unreadable", "not a regular file")
    if info.st_size == 0:
        raise ImageRejected(path, "empty_file", "0 bytes")


def _os_error_text(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _open_header(path) -> Image.Image:
    """``Image.open`` (header only) with every failure turned into an ImageRejected.

    PIL's own bomb check runs inside ``Image.open``: a header above twice
    ``Image.MAX_IMAGE_PIXELS`` raises DecompressionBombError there whatever our
    ``max_pixels`` is (and one above it warns, an error under ``-W error``).
    Both are reported as ``decompression_bomb``; the global limit is left alone.
    """
    _check_file(path)
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise ImageRejected(path, "not_an_image", "not a recognised image format") from None
    except ImportError:
        # ultralytics replaces Image.open on import with a version that, for an
        # unidentified file, tries to import a HEIF plugin; offline that import fails.
        raise ImageRejected(
            path, "not_an_image", "not a recognised image format (no decoder for it)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(path, "decompression_bomb", str(exc)) from None
    except FileNotFoundError:
        raise ImageRejected(path, "missing", "no such file") from None
    except OSError as exc:
        if exc.errno is not None:
            raise ImageRejected(path, "unreadable", _os_error_text(exc)) from None
        raise ImageRejected(path, "corrupt", str(exc) or type(exc).__name__) from None
    except (SyntaxError, ValueError, IndexError, TypeError, EOFError) as exc:
        raise ImageRejected(path, "corrupt", str(exc) or type(exc).__name__) from None


def _orientation(image: Image.Image, header_only: bool) -> int:
    """The EXIF orientation (1..8), 1 when absent or unparsable.

    A broken EXIF block does not reject the image: the pixels are fine, only
    their rotation is unknown. With ``header_only`` a PNG without EXIF in its
    header counts as unrotated, because PIL would decode the whole image to
    look for an ``eXIf`` chunk after the pixel data.
    """
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
        value = int(value)
    except Exception:  # noqa: BLE001 - any malformed EXIF means "no orientation"
        return 1
    return value if 1 <= value <= 8 else 1


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` as :func:`open_rgb` would return them, read from the header only.

    EXIF orientations 5-8 swap the sides. Raises ImageRejected when the file
    cannot be opened at all; ``max_pixels``/``min_side`` are not applied here.
    """
    with _open_header(path) as image:
        width, height = image.size
        if _orientation(image, header_only=True) in _SWAPS_SIDES:
            width, height = height, width
    return width, height


def open_rgb(
    path,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """Open ``path`` as a fully decoded RGB image in its displayed orientation.

    The checks run cheapest first: the file must exist and be non-empty, the
    header must be an image, its pixel count must not exceed ``max_pixels``
    (None: only PIL's own limit, which also caps any larger ``max_pixels`` at
    2 x ``Image.MAX_IMAGE_PIXELS``, about 179 Mpx) and both sides must be at
    least ``min_side``. Every failure raises ImageRejected.
    A 1x1 image is a valid image, but no detector finds anything in it, so it
    is rejected as ``too_small`` (set ``min_side=1`` to keep such images).

    Pixels are loaded here, not lazily, so a truncated or corrupt file fails in
    this call (in the loader thread) and never later inside a model batch.
    Truncated files are rejected, never padded: ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is not touched.

    Conversion (see :func:`to_rgb`): EXIF orientation is applied first, then
    transparency is composited onto ``background``, 16-bit and float images are
    contrast-stretched to 8 bits, and every other mode goes through PIL's
    ``convert("RGB")``.
    """
    with _open_header(path) as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageRejected(
                path,
                "decompression_bomb",
                f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}",
            )
        if min(width, height) < min_side:
            raise ImageRejected(path, "too_small", f"{width}x{height} < min_side {min_side}")
        _load(image, path)
        orientation = _orientation(image, header_only=False)
        if orientation != 1:
            try:
                image = ImageOps.exif_transpose(image)
            except Exception as exc:  # noqa: BLE001
                detail = f"cannot apply EXIF orientation {orientation}: {exc}"
                raise ImageRejected(path, "corrupt", detail) from None
        try:
            return to_rgb(image, background)
        except ValueError as exc:
            raise ImageRejected(path, "unsupported_mode", f"mode {image.mode}: {exc}") from None


def opener(image_settings: dict) -> Callable[..., Image.Image]:
    """:func:`open_rgb` with the ``images`` config section's limits (``max_pixels``,
    ``min_side``): what every stage that opens the run's images calls."""
    return functools.partial(
        open_rgb, max_pixels=image_settings["max_pixels"], min_side=image_settings["min_side"]
    )


def _load(image: Image.Image, path) -> None:
    """Decode all pixels, sorting the failure into truncated / corrupt / unreadable."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(path, "decompression_bomb", str(exc)) from None
    except EOFError as exc:
        raise ImageRejected(path, "truncated", str(exc) or "unexpected end of file") from None
    except OSError as exc:
        message = str(exc) or type(exc).__name__
        if exc.errno is not None:
            raise ImageRejected(path, "unreadable", _os_error_text(exc)) from None
        if "truncated" in message.lower():
            raise ImageRejected(path, "truncated", message) from None
        raise ImageRejected(path, "corrupt", message) from None
    except (SyntaxError, ValueError, IndexError, TypeError, zlib.error) as exc:
        raise ImageRejected(path, "corrupt", str(exc) or type(exc).__name__) from None


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """``image`` as an 8-bit RGB image (the same object when it already is one).

    - Alpha (RGBA, LA, PA, premultiplied modes) and palette/grey/RGB images with
      a ``transparency`` entry are composited onto ``background`` rather than
      having their alpha dropped: dropping it exposes whatever colour the
      encoder left under transparent pixels (often black), which is not what
      the image shows.
    - 16-bit (I;16, I;16B, ...), 32-bit integer (I) and float (F) images are
      mapped linearly from their own finite min..max onto 0..255 and then
      repeated in three channels. PIL's convert would clip everything above
      255 to white, erasing a 16-bit image. A flat image keeps its value,
      clipped to 0..255; NaN becomes 0.
    - Everything else (L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX) uses PIL's
      ``convert("RGB")``.

    Raises ValueError for a mode PIL cannot convert.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if mode in _ALPHA_MODES or (mode in {"P", "L", "RGB", "1"} and "transparency" in image.info):
        rgba = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    try:
        values = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - PIL has no array view of this mode
        raise ValueError(f"no numeric view of mode {image.mode}: {exc}") from None
    if values.ndim != 2:
        raise ValueError(f"expected one channel, got shape {values.shape}")
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    else:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    out = values.astype(np.float32)
    if hi > lo:
        out -= lo
        out *= 255.0 / (hi - lo)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(out, 0.0, 255.0, out=out)
    grey = Image.fromarray(np.rint(out).astype(np.uint8))
    return grey.convert("RGB")


def crop_box(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """The integer pixel rectangle ``(left, top, right, bottom)`` that a float box covers.

    This is the definition of a crop for every stage: ``left``/``top`` are the
    floor and ``right``/``bottom`` the ceiling of the box in original pixels,
    so every pixel the box touches is kept. Coordinates within 1e-6 of an
    integer snap to it first, so that a box mapped back from a resized image
    (``640 / 0.8 = 800.0000000000001``) does not gain a pixel column. The
    result is clipped to the ``width`` x ``height`` image and is always at
    least 1 pixel wide and high, even for a degenerate or outside box. A box
    given with x2 < x1 (or y2 < y1) is read with its corners swapped.

    Raises ValueError for non-finite coordinates or an empty image.
    """
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"box has non-finite coordinates: {(x1, y1, x2, y2)}")
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height}")
    left, right = _span(min(x1, x2), max(x1, x2), width)
    top, bottom = _span(min(y1, y2), max(y1, y2), height)
    return left, top, right, bottom


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    start = min(max(math.floor(lo + _SNAP), 0), size - 1)
    end = max(min(math.ceil(hi - _SNAP), size), start + 1)
    return start, end


def crop_boxes(boxes, width: int, height: int) -> np.ndarray:
    """:func:`crop_box` of every row of ``boxes`` (N, 4) at once: an (N, 4) int64 array.

    The same rectangles as :func:`crop_box` row by row (and the same errors),
    computed with array operations so that its cost per box is tiny.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise ValueError(
            f"box has non-finite coordinates: {b[~np.isfinite(b).all(axis=1)][0].tolist()}"
        )
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height}")
    out = np.empty((len(b), 4), dtype=np.int64)
    for lo, hi, size, (i, j) in (
        (b[:, [0, 2]].min(1), b[:, [0, 2]].max(1), width, (0, 2)),
        (b[:, [1, 3]].min(1), b[:, [1, 3]].max(1), height, (1, 3)),
    ):
        start = np.clip(np.floor(lo + _SNAP), 0, size - 1)
        end = np.maximum(np.minimum(np.ceil(hi - _SNAP), size), start + 1)
        out[:, i], out[:, j] = start, end
    return out


def crop(image: Image.Image, bbox) -> Image.Image:
    """The pixels of ``bbox`` (float, original pixels) cut as :func:`crop_box` defines them."""
    return image.crop(crop_box(bbox, *image.size))


def pad_to_aspect_ratio(
    image: Image.Image, max_ratio: float, fill: tuple[int, int, int] = BACKGROUND
) -> Image.Image:
    """``image`` centred on a ``fill`` canvas whose sides differ at most ``max_ratio`` times.

    Only the short side grows, to ``ceil(long side / max_ratio)``; an image within
    the ratio comes back as the same object, so ordinary crops are untouched.
    """
    width, height = image.size
    long_side, short_side = max(width, height), min(width, height)
    if long_side <= max_ratio * short_side:
        return image
    short_side = math.ceil(long_side / max_ratio)
    size = (width, short_side) if width >= height else (short_side, height)
    if image.mode in ("RGB", "RGBA", "L", "LA"):  # fill in the image's mode (RGBA: opaque)
        colour = ImageColor.getcolor("rgb({}, {}, {})".format(*fill), image.mode)
    else:  # a palette or another model (the caption stage's crops are RGB): zero
        colour = 0
    canvas = Image.new(image.mode, size, colour)
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def vlm_crop(image: Image.Image, bbox) -> Image.Image:
    """The crop of ``bbox`` as a VLM is given it: :func:`crop`, padded to
    :data:`VLM_MAX_ASPECT_RATIO` where the box is degenerate."""
    return pad_to_aspect_ratio(crop(image, bbox), VLM_MAX_ASPECT_RATIO)


def describe_error(exc: BaseException) -> str:
    """``"Type: message"`` of an exception for a table's error column (the message alone
    when it already starts with the type's name, the name alone when it has none)."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text and not text.startswith(name) else (text or name)


class CropUnavailable(Exception):
    """A crop that could not be cut: its image could not be read, or its box not cut.

    The message is what the crop's row records as its error.
    """

    @classmethod
    def unreadable(cls, exc: BaseException) -> CropUnavailable:
        return cls(f"image could not be read: {describe_error(exc)}")

    @classmethod
    def uncut(cls, exc: BaseException) -> CropUnavailable:
        return cls(f"crop failed: {describe_error(exc)}")


@dataclass(frozen=True)
class CropSource:
    """A crop not cut yet: its image's path, its box (float, original pixels) and the
    function that opens the image (:func:`open_rgb` with the run's limits, as
    :func:`opener` gives; it must pickle to travel to another process).

    A captioner that encodes its crops in worker processes takes these in place of
    crops (:func:`cut_crops` runs in the worker), so that the process holding the
    requests never decodes an image.
    """

    path: str
    box: tuple[float, float, float, float]
    open_image: Callable[..., Image.Image] = open_rgb


def cut_crops(sources: Iterable[CropSource]) -> list[Image.Image | CropUnavailable]:
    """The crop of each source as a VLM is given it (:func:`vlm_crop`), in order, or the
    :class:`CropUnavailable` that says why not.

    An image is decoded once for a run of consecutive sources with the same path
    (and opener), and only that one image is held at a time.
    """
    crops: list[Image.Image | CropUnavailable] = []
    current: tuple | None = None
    image: Image.Image | BaseException | None = None
    try:
        for source in sources:
            key = (source.path, source.open_image)
            if key != current:
                if isinstance(image, Image.Image):
                    image.close()
                current = key
                try:
                    image = source.open_image(source.path)
                except Exception as exc:  # noqa: BLE001 - this image's crops record it
                    _drop_tracebacks(exc)
                    image = exc
            if isinstance(image, BaseException):
                crops.append(CropUnavailable.unreadable(image))
                continue
            try:
                crops.append(vlm_crop(image, tuple(source.box)))
            except Exception as exc:  # noqa: BLE001 - this crop records it, the others go on
                _drop_tracebacks(exc)
                crops.append(CropUnavailable.uncut(exc))
    finally:
        if isinstance(image, Image.Image):
            image.close()
    return crops


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes of ``image`` (converted with :func:`to_rgb` unless RGB or L)."""
    if image.mode not in ("RGB", "L"):
        image = to_rgb(image)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def to_data_url(image: Image.Image, quality: int = 95) -> str:
    """``data:image/jpeg;base64,...`` of ``image``: how OpenAI-compatible servers take images."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image, quality)).decode("ascii")


def resize_longest(image: Image.Image, max_side: int | None) -> tuple[Image.Image, float]:
    """``image`` shrunk so its longer side is at most ``max_side``, and the scale applied.

    Never enlarges: an image already small enough (or ``max_side`` None) comes
    back as the same object with scale 1.0. Otherwise the longer side becomes
    exactly ``max_side`` and ``scale = max_side / longer side``; a box found on
    the resized image maps back to original pixels as ``box / scale`` (the
    shorter side is rounded, so it is off by less than half a resized pixel).
    """
    if max_side is None:
        return image, 1.0
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    width, height = image.size
    longest = max(width, height)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    if width >= height:
        size = (max_side, max(1, round(height * scale)))
    else:
        size = (max(1, round(width * scale)), max_side)
    return image.resize(size, Image.Resampling.BILINEAR), scale


def iter_images_prefetched(
    paths: Iterable,
    open_fn: Callable,
    workers: int = 2,
    prefetch: int | None = None,
    catch: tuple[type[BaseException], ...] = (ImageRejected,),
) -> Iterator[tuple[int, object, object]]:
    """Yield ``(index, path, open_fn(path))`` in input order, decoding ahead in threads.

    Decoding runs in ``workers`` threads while the consumer runs its model on
    earlier images; PIL releases the GIL while it decodes, so the two overlap
    even on CPython. At most ``prefetch`` (default ``2 * workers``) images are
    being decoded or waiting beyond the one the consumer holds, which bounds
    memory however long ``paths`` is (it is consumed lazily).

    An exception of a type in ``catch`` (by default ImageRejected) is yielded
    in place of the image, so rejects keep their position. Any other exception
    is a bug or an environment failure, not a bad image: it is raised to the
    consumer at that position and the remaining work is cancelled.
    ``workers=0`` opens each image in the consumer's thread when it is reached.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    items = enumerate(paths)
    if workers == 0:
        for index, path in items:
            yield index, path, _call(open_fn, path, catch)
        return
    prefetch = 2 * workers if prefetch is None else prefetch
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    pending: deque = deque()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-loader")

    def top_up() -> None:
        while len(pending) < prefetch:
            nxt = next(items, None)
            if nxt is None:
                return
            index, path = nxt
            pending.append((index, path, executor.submit(_call, open_fn, path, catch)))

    try:
        top_up()
        while pending:
            index, path, future = pending.popleft()
            result = future.result()
            top_up()
            yield index, path, result
    finally:
        for *_, future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def iter_image_rows(
    paths: Iterable,
    open_fn: Callable,
    workers: int = 2,
    catch: tuple[type[BaseException], ...] = (ImageRejected,),
    sort: bool = False,
) -> Iterator[tuple[object, object, list[int]]]:
    """Decode each distinct image of ``paths`` (one path per row: a table's
    ``image_path`` column) once and yield ``(path, image or exception, rows)``.

    ``rows`` are the positions in ``paths`` of that image's rows, in order; the
    images come in the order of their first row (sorted with ``sort``). Decoding
    runs ahead in ``workers`` threads (:func:`iter_images_prefetched`, whose
    ``catch`` says which exceptions are yielded in place of the image), so a stage
    cutting the crops of one image overlaps the decoding of the next: what the
    captions, the report's crops and the export's results tree all do.
    """
    by_path: dict = {}
    for row, path in enumerate(paths):
        by_path.setdefault(path, []).append(row)
    keys = sorted(by_path) if sort else list(by_path)
    for _, path, image in iter_images_prefetched(keys, open_fn, workers=workers, catch=catch):
        yield path, image, by_path[path]


def _call(open_fn: Callable, path, catch: tuple[type[BaseException], ...]):
    try:
        return open_fn(path)
    except catch as exc:
        _drop_tracebacks(exc)
        return exc


def _drop_tracebacks(exc: BaseException | None) -> None:
    """Detach the frames of a kept exception: they would keep decoded pixels alive."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
