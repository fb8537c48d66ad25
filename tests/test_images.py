"""images.py: what every stage gets from an image file, and what a crop is."""

from __future__ import annotations

import base64
import io
import itertools
import math
import pickle
import threading

import numpy as np
import pytest
from PIL import Image, ImageFile

from rare_objects.io import images
from rare_objects.io.images import ImageRejected, crop_box
from tests.bad_images import BOMB_SIDE, EXIF_STORED_SIZE, write_bad_corpus

WAIT_S = 30  # guard against a hang only; no test measures time


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_images")
    return folder, write_bad_corpus(folder)


def _outcome(path, **kwargs) -> str:
    try:
        image = images.open_rgb(path, **kwargs)
    except ImageRejected as exc:
        return exc.reason
    assert image.mode == "RGB"
    return "ok"


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --- the corpus -------------------------------------------------------------


def test_corpus_covers_every_case(corpus):
    _, expected = corpus
    assert set(expected.values()) >= {
        "ok",
        "empty_file",
        "truncated",
        "not_an_image",
        "too_small",
        "decompression_bomb",
    }
    assert sum(v == "ok" for v in expected.values()) == 5
    assert set(expected.values()) <= set(images.REASONS) | {"ok"}


def test_corpus_files_stay_small(corpus):
    folder, expected = corpus
    assert all((folder / name).stat().st_size < 1_000_000 for name in expected)


@pytest.mark.parametrize(
    "name",
    [
        "empty.jpg",
        "truncated.jpg",
        "text.jpg",
        "cmyk.jpg",
        "gradient16.png",
        "rgba.png",
        "palette.png",
        "exif_rotated.jpg",
        "one_pixel.png",
        "bomb.png",
    ],
)
def test_open_rgb_outcome(corpus, name):
    folder, expected = corpus
    assert _outcome(folder / name) == expected[name]


def test_rejects_name_path_reason_and_detail(corpus):
    folder, _ = corpus
    with pytest.raises(ImageRejected) as info:
        images.open_rgb(folder / "truncated.jpg")
    exc = info.value
    assert exc.reason == "truncated"
    assert exc.path == str(folder / "truncated.jpg")
    assert exc.detail
    assert str(exc) == f"{exc.path}: truncated: {exc.detail}"


def test_cmyk_becomes_rgb_cyan(corpus):
    folder, _ = corpus
    pixels = _pixels(images.open_rgb(folder / "cmyk.jpg"))
    assert np.abs(pixels - (0, 255, 255)).max() <= 3


def test_16bit_is_scaled_not_clipped(corpus):
    folder, _ = corpus
    image = images.open_rgb(folder / "gradient16.png")
    pixels = _pixels(image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    row = pixels[0, :, 0]
    assert len(np.unique(row)) > 200
    assert row.min() == 0 and row.max() == 255
    assert (np.diff(row) >= 0).all()
    assert (pixels == pixels[:1]).all()  # every row the same ramp


def test_rgba_is_composited_onto_the_background(corpus):
    folder, _ = corpus
    pixels = _pixels(images.open_rgb(folder / "rgba.png"))
    half = pixels.shape[1] // 2
    assert (pixels[:, :half] == (255, 0, 0)).all()
    assert (pixels[:, half:] == images.BACKGROUND).all()
    other = _pixels(images.open_rgb(folder / "rgba.png", background=(10, 20, 30)))
    assert (other[:, half:] == (10, 20, 30)).all()


def test_palette_transparency_is_composited(corpus):
    folder, _ = corpus
    pixels = _pixels(images.open_rgb(folder / "palette.png"))
    half = pixels.shape[1] // 2
    assert (pixels[:, :half] == images.BACKGROUND).all()
    assert (pixels[:, half:] == (0, 200, 0)).all()


def test_exif_orientation_is_applied(corpus):
    folder, _ = corpus
    stored_w, stored_h = EXIF_STORED_SIZE
    with Image.open(folder / "exif_rotated.jpg") as raw:
        assert raw.size == (stored_w, stored_h)
    image = images.open_rgb(folder / "exif_rotated.jpg")
    assert image.size == (stored_h, stored_w)
    pixels = _pixels(image)
    top, bottom = pixels[: stored_w // 2 - 4], pixels[stored_w // 2 + 4 :]
    assert np.abs(top - (255, 0, 0)).max() <= 8
    assert np.abs(bottom - (0, 0, 255)).max() <= 8


def test_image_size_matches_open_rgb_and_applies_orientation(corpus):
    folder, expected = corpus
    for name, outcome in expected.items():
        if outcome == "ok":
            assert images.image_size(folder / name) == images.open_rgb(folder / name).size, name
    assert images.image_size(folder / "exif_rotated.jpg") == EXIF_STORED_SIZE[::-1]
    assert images.image_size(folder / "truncated.jpg") == (160, 120)  # header only: no decode
    assert images.image_size(folder / "one_pixel.png") == (1, 1)  # limits are not applied


def test_image_size_rejects_unopenable(corpus, tmp_path):
    folder, _ = corpus
    for name, reason in [("empty.jpg", "empty_file"), ("text.jpg", "not_an_image")]:
        with pytest.raises(ImageRejected) as info:
            images.image_size(folder / name)
        assert info.value.reason == reason
    with pytest.raises(ImageRejected) as info:
        images.image_size(tmp_path / "absent.png")
    assert info.value.reason == "missing"


def test_one_pixel_image_is_kept_with_min_side_one(corpus):
    folder, _ = corpus
    image = images.open_rgb(folder / "one_pixel.png", min_side=1)
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (200, 100, 50)


@pytest.mark.parametrize(
    "size, min_side, outcome",
    [((8, 8), 8, "ok"), ((7, 40), 8, "too_small"), ((40, 7), 8, "too_small"), ((7, 7), 7, "ok")],
)
def test_min_side(tmp_path, size, min_side, outcome):
    path = tmp_path / "small.png"
    Image.new("RGB", size).save(path)
    assert _outcome(path, min_side=min_side) == outcome


def test_max_pixels_is_checked_before_decoding(corpus):
    folder, _ = corpus
    # 160x120 = 19200 pixels: a header check says "bomb" before the truncation is found
    assert _outcome(folder / "truncated.jpg", max_pixels=19_199) == "decompression_bomb"
    assert _outcome(folder / "truncated.jpg", max_pixels=19_200) == "truncated"
    assert _outcome(folder / "cmyk.jpg", max_pixels=64 * 48) == "ok"


def test_pil_bomb_limit_still_applies_without_max_pixels(corpus):
    folder, _ = corpus
    assert BOMB_SIDE * BOMB_SIDE > 2 * Image.MAX_IMAGE_PIXELS
    assert _outcome(folder / "bomb.png", max_pixels=None) == "decompression_bomb"


def test_no_pil_globals_are_changed(corpus):
    folder, expected = corpus
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for name in expected:
        _outcome(folder / name)
        _outcome(folder / name, max_pixels=10)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_and_directory(tmp_path):
    assert _outcome(tmp_path / "nope.jpg") == "missing"
    assert _outcome(tmp_path) == "unreadable"


def test_truncated_png_is_rejected(tmp_path):
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert _outcome(tmp_path / "cut.png") == "truncated"


def test_returned_image_is_loaded_and_detached_from_the_file(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (32, 16), (0, 128, 255)).save(path)
    image = images.open_rgb(path)
    path.unlink()
    assert np.abs(_pixels(image) - (0, 128, 255)).max() <= 3
    assert image.crop((0, 0, 4, 4)).size == (4, 4)


# --- modes -------------------------------------------------------------------

BASE = Image.new("RGB", (16, 12), (10, 200, 30))


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "LA", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"],
)
def test_to_rgb_every_mode(mode):
    image = BASE.convert(mode)
    out = images.to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("1", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("PA", "TIFF"),
        ("I", "TIFF"),
        ("F", "TIFF"),
        ("YCbCr", "TIFF"),
        ("LAB", "TIFF"),
        ("CMYK", "TIFF"),
    ],
)
def test_open_rgb_every_mode_from_a_file(tmp_path, mode, fmt):
    path = tmp_path / f"image.{fmt.lower()}"
    BASE.convert(mode).save(path, fmt)
    image = images.open_rgb(path)
    assert image.mode == "RGB" and image.size == BASE.size


def test_grey_with_transparency_is_composited(tmp_path):
    path = tmp_path / "grey.png"
    image = Image.new("L", (16, 16), 0)
    image.paste(90, (8, 0, 16, 16))
    image.save(path, transparency=0)
    pixels = _pixels(images.open_rgb(path, background=(1, 2, 3)))
    assert (pixels[:, :8] == (1, 2, 3)).all() and (pixels[:, 8:] == 90).all()


def test_half_transparent_pixels_blend_with_the_background():
    image = Image.new("RGBA", (8, 8), (0, 0, 255, 128))
    pixel = images.to_rgb(image).getpixel((0, 0))
    assert all(abs(a - b) <= 2 for a, b in zip(pixel, (127, 127, 255)))


def test_la_premultiplied_alpha():
    image = Image.new("LA", (4, 4), (200, 255)).convert("La")
    assert images.to_rgb(image).getpixel((0, 0)) == (200, 200, 200)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_modes_are_stretched(mode):
    ramp = np.linspace(300, 4000, 64).round().astype(np.uint16)
    data = np.tile(ramp, (4, 1)).astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    image = Image.frombytes(mode, (64, 4), data)
    row = _pixels(images.to_rgb(image))[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) > 0).all()


def test_float_image_ignores_non_finite_values_for_the_range():
    values = np.tile(np.linspace(-1.0, 1.0, 32, dtype=np.float32), (2, 1))
    values[0, 0], values[0, 1], values[0, 2] = np.nan, np.inf, -np.inf
    row = _pixels(images.to_rgb(Image.fromarray(values)))[:, :, 0]
    assert tuple(row[0, :3]) == (0, 255, 0)
    assert row[1, 0] == 0 and row[1, -1] == 255


def test_flat_high_depth_image_keeps_its_value_clipped():
    assert images.to_rgb(Image.new("I;16", (4, 4), 100)).getpixel((0, 0)) == (100, 100, 100)
    assert images.to_rgb(Image.new("I;16", (4, 4), 40_000)).getpixel((0, 0)) == (255, 255, 255)


def test_rgb_passes_through_unchanged():
    assert images.to_rgb(BASE) is BASE


# --- ImageRejected ------------------------------------------------------------


def test_image_rejected_pickles_and_validates_its_reason():
    exc = ImageRejected("/data/a.jpg", "too_small", "1x1 < min_side 8")
    copy = pickle.loads(pickle.dumps(exc))
    fields = (copy.path, copy.reason, copy.detail, str(copy))
    assert fields == (exc.path, exc.reason, exc.detail, str(exc))
    assert str(ImageRejected("a.jpg", "missing")) == "a.jpg: missing"
    with pytest.raises(ValueError):
        ImageRejected("a.jpg", "no_such_reason")


# --- crop_box / crop ------------------------------------------------------------


@pytest.mark.parametrize(
    "bbox, size, box",
    [
        ((10, 20, 30, 40), (100, 100), (10, 20, 30, 40)),  # integers: exact
        ((10.2, 20.7, 29.1, 39.9), (100, 100), (10, 20, 30, 40)),  # floor / ceil
        ((0, 0, 100, 50), (100, 50), (0, 0, 100, 50)),  # the whole image
        ((-5.5, -3, 120.2, 70), (100, 50), (0, 0, 100, 50)),  # clipped
        ((30, 30, 30, 30), (100, 100), (30, 30, 31, 31)),  # a point: 1 px
        ((30.5, 30.5, 30.5, 30.5), (100, 100), (30, 30, 31, 31)),
        ((100, 50, 100, 50), (100, 50), (99, 49, 100, 50)),  # on the far corner
        ((150, 80, 180, 90), (100, 50), (99, 49, 100, 50)),  # wholly outside, far side
        ((-20, -20, -10, -10), (100, 50), (0, 0, 1, 1)),  # wholly outside, near side
        ((30, 40, 10, 20), (100, 100), (10, 20, 30, 40)),  # corners swapped
        ((640 / 0.8, 0, 1000.0000000000001, 9.9999999999), (1600, 900), (800, 0, 1000, 10)),  # snap
        ((0.3, 0.3, 0.6, 0.6), (1, 1), (0, 0, 1, 1)),
    ],
)
def test_crop_box_cases(bbox, size, box):
    assert crop_box(bbox, *size) == box


def test_crop_box_accepts_numpy_and_returns_python_ints():
    box = crop_box(np.array([1.5, 2.5, 3.5, 4.5], dtype=np.float32), np.int64(10), np.int64(10))
    assert box == (1, 2, 4, 5) and all(type(v) is int for v in box)


@pytest.mark.parametrize(
    "bbox, size",
    [((math.nan, 0, 1, 1), (10, 10)), ((0, 0, math.inf, 1), (10, 10)), ((0, 0, 1, 1), (0, 10))],
)
def test_crop_box_rejects_invalid_input(bbox, size):
    with pytest.raises(ValueError):
        crop_box(bbox, *size)


def test_crop_box_properties_on_random_boxes():
    rng = np.random.default_rng(7)
    for _ in range(3000):
        width, height = (int(v) for v in rng.integers(1, 300, 2))
        xs = np.sort(rng.uniform(-40, width + 40, 2))
        ys = np.sort(rng.uniform(-40, height + 40, 2))
        if rng.random() < 0.2:
            xs = np.round(xs)
        left, top, right, bottom = crop_box((xs[0], ys[0], xs[1], ys[1]), width, height)
        for lo, hi, (a, b), size in [(left, right, xs, width), (top, bottom, ys, height)]:
            assert 0 <= lo < hi <= size
            visible_a, visible_b = max(a, 0.0), min(b, float(size))
            if visible_b - visible_a > 1e-3:  # the box covers part of the image
                assert lo <= visible_a + 1e-6 and hi >= visible_b - 1e-6  # it is all kept
                # and no more
                assert lo == math.floor(visible_a + 1e-6) and hi == math.ceil(visible_b - 1e-6)
                assert hi - lo <= visible_b - visible_a + 2
            else:
                assert hi - lo == 1


def test_crop_cuts_exactly_the_crop_box():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    for bbox in [(3.2, 4.8, 20.1, 30.0), (0, 0, 70, 50), (69.5, 49.5, 75, 60), (-3, -3, 0.2, 0.2)]:
        left, top, right, bottom = crop_box(bbox, 70, 50)
        piece = images.crop(image, bbox)
        assert piece.size == (right - left, bottom - top)
        assert (np.asarray(piece) == pixels[top:bottom, left:right]).all()


@pytest.mark.parametrize(
    "size, padded",
    [((320, 1), (320, 2)), ((1, 320), (2, 320)), ((201, 1), (201, 2)), ((4001, 3), (4001, 21))],
)
def test_pad_to_aspect_ratio_grows_only_the_short_side_and_centres_the_pixels(size, padded):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = images.pad_to_aspect_ratio(Image.fromarray(pixels), 200)
    assert out.size == padded and max(padded) / min(padded) <= 200
    array = np.asarray(out)
    top, left = (padded[1] - size[1]) // 2, (padded[0] - size[0]) // 2
    assert (array[top : top + size[1], left : left + size[0]] == pixels).all()
    outside = np.ones(array.shape[:2], dtype=bool)
    outside[top : top + size[1], left : left + size[0]] = False
    assert (array[outside] == images.BACKGROUND).all()


def test_pad_to_aspect_ratio_keeps_an_image_within_the_ratio_as_it_is():
    for size in [(200, 1), (1, 1), (70, 50), (3, 600)]:
        image = Image.new("RGB", size)
        assert images.pad_to_aspect_ratio(image, 200) is image
    grey = images.pad_to_aspect_ratio(Image.new("L", (500, 1), 0), 200)
    assert grey.mode == "L" and grey.size == (500, 3)
    assert np.asarray(grey)[:, 0].tolist() == [255, 0, 255]  # the white fill, as grey
    rgba = images.pad_to_aspect_ratio(Image.new("RGBA", (1, 500), (0, 0, 0, 0)), 200)
    assert np.asarray(rgba)[0, 0].tolist() == [255, 255, 255, 255]


def test_a_degenerate_box_gives_a_vlm_crop_within_the_vlm_ratio(tmp_path):
    """A detector's zero-height box is a 1-pixel-high crop: 320:1, which Qwen2-VL refuses."""
    pixels = np.random.default_rng(2).integers(0, 256, (384, 640, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    box = (320.0, 384.0, 640.0, 384.0)
    assert images.crop(image, box).size == (320, 1)
    piece = images.vlm_crop(image, box)
    assert piece.size == (320, 2)
    assert (np.asarray(piece)[0] == pixels[383, 320:640]).all()
    path = tmp_path / "frame.png"
    image.save(path)
    (cut,) = images.cut_crops([images.CropSource(str(path), box)])
    assert (np.asarray(cut) == np.asarray(piece)).all()
    ordinary = (3.2, 4.8, 20.1, 30.0)
    assert (
        np.asarray(images.vlm_crop(image, ordinary)) == np.asarray(images.crop(image, ordinary))
    ).all()


def test_cut_crops_equals_crop_decodes_each_run_once_and_records_what_failed(tmp_path):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.fromarray(pixels).save(first)
    Image.fromarray(pixels[::-1]).save(second)
    opened = []

    def counting_open(path):
        opened.append(path)
        return images.open_rgb(path)

    def source(path, box):
        return images.CropSource(str(path), box, counting_open)

    gone = tmp_path / "gone.png"
    sources = [
        source(first, (1, 2, 30, 20)),
        source(first, (10.5, 0, 60, 40)),
        source(first, (math.nan, 0, 5, 5)),  # a box that cannot be cut
        source(second, (0, 0, 8, 8)),
        source(gone, (0, 0, 4, 4)),
        source(gone, (1, 1, 4, 4)),
        source(first, (0, 0, 3, 3)),  # first again, after another image: opened again
    ]
    cut = images.cut_crops(sources)

    assert opened == [str(first), str(second), str(gone), str(first)]  # once per run of a path
    for k in (0, 1, 3, 6):
        expected = images.crop(images.open_rgb(sources[k].path), sources[k].box)
        assert cut[k].size == expected.size and cut[k].tobytes() == expected.tobytes()
    assert isinstance(cut[2], images.CropUnavailable)
    assert str(cut[2]).startswith("crop failed: ValueError")
    for k in (4, 5):
        assert isinstance(cut[k], images.CropUnavailable)
        assert (
            str(cut[k]) == f"image could not be read: ImageRejected: {gone}: missing: no such file"
        )
    # what travels to an encoder process and back
    assert pickle.loads(pickle.dumps(images.CropSource(str(first), (0, 0, 1, 1)))).path == str(
        first
    )
    assert str(pickle.loads(pickle.dumps(cut[4]))) == str(cut[4])


# --- resize_longest -------------------------------------------------------------


def test_resize_never_enlarges():
    image = Image.new("RGB", (300, 200))
    assert images.resize_longest(image, 300) == (image, 1.0)
    assert images.resize_longest(image, 1000) == (image, 1.0)
    assert images.resize_longest(image, None) == (image, 1.0)
    with pytest.raises(ValueError):
        images.resize_longest(image, 0)


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((1600, 900), 1280, (1280, 720)),
        ((900, 1600), 640, (360, 640)),
        ((1000, 1000), 500, (500, 500)),
        ((5000, 3), 100, (100, 1)),
    ],
)
def test_resize_longest_sizes(size, max_side, expected):
    resized, scale = images.resize_longest(Image.new("RGB", size), max_side)
    assert resized.size == expected
    assert scale == pytest.approx(max_side / max(size))


@pytest.mark.parametrize(
    "size, rect", [((1600, 900), (400, 300, 800, 600)), ((900, 1600), (133, 517, 611, 1400))]
)
def test_resize_scale_maps_boxes_back(size, rect):
    image = Image.new("RGB", size)
    image.paste((255, 255, 255), rect)
    resized, scale = images.resize_longest(image, 640)
    mask = np.asarray(resized)[..., 0] > 127
    ys, xs = np.nonzero(mask)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / scale
    assert np.abs(found - np.array(rect)).max() <= 1.5 / scale
    assert crop_box(found, *size) == pytest.approx(rect, abs=1.5 / scale + 1)


# --- encoding ---------------------------------------------------------------------


def test_encode_jpeg_and_data_url_round_trip():
    image = Image.new("RGB", (20, 10), (250, 10, 10))
    data = images.encode_jpeg(image)
    assert data[:2] == b"\xff\xd8"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (20, 10) and np.abs(_pixels(decoded) - (250, 10, 10)).max() <= 6
    url = images.to_data_url(image)
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == data


def test_encode_jpeg_composites_alpha():
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    decoded = Image.open(io.BytesIO(images.encode_jpeg(image)))
    assert decoded.mode == "RGB" and np.abs(_pixels(decoded) - images.BACKGROUND).max() <= 3


def test_encode_jpeg_quality_matters():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert len(images.encode_jpeg(image, quality=30)) < len(images.encode_jpeg(image, quality=95))


# --- iter_images_prefetched --------------------------------------------------------


class CountingOpen:
    """An open_fn that records how many calls started, and rejects the names it is told to."""

    def __init__(self, reject=(), fail=()):
        self.started = 0
        self.reject, self.fail = set(reject), set(fail)
        self.cond = threading.Condition()
        self.threads = set()

    def __call__(self, path):
        with self.cond:
            self.started += 1
            self.threads.add(threading.get_ident())
            self.cond.notify_all()
        if path in self.reject:
            raise ImageRejected(path, "corrupt", "told to")
        if path in self.fail:
            raise RuntimeError(f"bug on {path}")
        return f"image of {path}"

    def wait_started(self, n) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.started >= n, timeout=WAIT_S)


@pytest.mark.parametrize("workers, prefetch", [(0, None), (1, 1), (2, None), (2, 1), (3, 7)])
def test_prefetch_keeps_order_and_yields_rejects_in_place(workers, prefetch):
    paths = [f"p{i}" for i in range(25)]
    opener = CountingOpen(reject={"p3", "p4", "p24"})
    got = list(images.iter_images_prefetched(paths, opener, workers=workers, prefetch=prefetch))
    assert [(i, p) for i, p, _ in got] == list(enumerate(paths))
    for _, path, item in got:
        if path in opener.reject:
            assert isinstance(item, ImageRejected) and item.reason == "corrupt"
            assert item.__traceback__ is None
        else:
            assert item == f"image of {path}"
    assert opener.started == len(paths)


def test_prefetch_order_does_not_follow_completion_order():
    second_done = threading.Event()

    def open_fn(path):
        if path == "a":
            assert second_done.wait(WAIT_S)
            return "A"
        if path == "b":
            second_done.set()
        return path.upper()

    iterator = images.iter_images_prefetched(["a", "b", "c"], open_fn, workers=2)
    assert [item for _, _, item in iterator] == ["A", "B", "C"]


@pytest.mark.parametrize("workers, prefetch", [(1, 1), (2, 2), (2, 5), (4, 3)])
def test_prefetch_bounds_work_in_flight(workers, prefetch):
    opener = CountingOpen()
    pulled = 0

    def paths():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    received = 0
    iterator = images.iter_images_prefetched(paths(), opener, workers=workers, prefetch=prefetch)
    for index, _, _ in iterator:
        received += 1
        assert opener.started <= received + prefetch
        assert pulled <= received + prefetch
        if index == 40:
            break
    iterator.close()
    assert opener.started <= received + prefetch
    assert pulled <= received + prefetch


def test_prefetch_decodes_ahead_while_the_consumer_holds_an_image():
    opener = CountingOpen()
    iterator = images.iter_images_prefetched(range(10), opener, workers=2, prefetch=3)
    next(iterator)
    assert opener.wait_started(4)  # the held one and three more, without asking for them
    assert opener.threads.isdisjoint({threading.get_ident()})
    iterator.close()


def test_prefetch_without_workers_is_lazy_and_in_the_calling_thread():
    opener = CountingOpen()
    iterator = images.iter_images_prefetched(range(10), opener, workers=0)
    next(iterator)
    next(iterator)
    assert opener.started == 2
    assert opener.threads == {threading.get_ident()}


def test_prefetch_raises_other_errors_at_their_position():
    opener = CountingOpen(fail={"p3"})
    seen = []
    with pytest.raises(RuntimeError, match="bug on p3"):
        paths = [f"p{i}" for i in range(20)]
        for _, path, _ in images.iter_images_prefetched(paths, opener, workers=2):
            seen.append(path)
    assert seen == ["p0", "p1", "p2"]
    assert opener.started <= 3 + 1 + 4


def test_prefetch_catch_widens_what_is_yielded():
    opener = CountingOpen(fail={"p1"})
    catch = (ImageRejected, RuntimeError)
    got = list(images.iter_images_prefetched(["p0", "p1", "p2"], opener, catch=catch))
    assert isinstance(got[1][2], RuntimeError) and got[2][2] == "image of p2"


def test_prefetch_rejects_bad_settings():
    with pytest.raises(ValueError):
        list(images.iter_images_prefetched(["a"], str, workers=-1))
    with pytest.raises(ValueError):
        list(images.iter_images_prefetched(["a"], str, workers=2, prefetch=0))


def test_prefetch_with_open_rgb_over_the_corpus(corpus):
    folder, expected = corpus
    names = sorted(expected)
    paths = [folder / n for n in names]
    for index, path, item in images.iter_images_prefetched(paths, images.open_rgb):
        outcome = item.reason if isinstance(item, ImageRejected) else "ok"
        assert path == folder / names[index]
        assert outcome == expected[names[index]]


# --------------------------------------------------------------------------- image rows


@pytest.mark.parametrize("workers", [0, 2])
def test_image_rows_decode_each_image_once_for_all_its_rows(workers):
    paths = ["b", "a", "b", "c", "a", "b"]
    opener = CountingOpen(reject={"c"})
    got = list(images.iter_image_rows(paths, opener, workers=workers))
    assert [(path, rows) for path, _, rows in got] == [
        ("b", [0, 2, 5]),
        ("a", [1, 4]),
        ("c", [3]),
    ]  # in the order of each image's first row; rows in order
    assert [item for _, item, _ in got][:2] == ["image of b", "image of a"]
    assert isinstance(got[2][1], ImageRejected)  # in place of the image, for all its rows
    assert opener.started == 3


def test_image_rows_sorted_and_with_a_wider_catch():
    opener = CountingOpen(fail={"a"})
    got = list(
        images.iter_image_rows(
            ["c", "a", "b", "c"], opener, sort=True, catch=(ImageRejected, RuntimeError)
        )
    )
    assert [(path, rows) for path, _, rows in got] == [("a", [1]), ("b", [2]), ("c", [0, 3])]
    assert isinstance(got[0][1], RuntimeError)
    assert list(images.iter_image_rows([], opener)) == []
