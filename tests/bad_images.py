"""A small corpus of awkward image files, and what ``images.open_rgb`` must make of each.

Each file is built to be recognisable after conversion (see the constants),
so a test can check not only that it opens but that the pixels came out
right. Everything is generated in a few tens of milliseconds and a few MB of
memory, including the decompression bomb, whose PNG is written by hand.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 20_000
"""The bomb's header claims BOMB_SIDE x BOMB_SIDE = 400 Mpx (the file is ~50 kB)."""

EXIF_STORED_SIZE = (96, 48)
"""The EXIF image is stored wide; orientation 6 must bring it out 48 wide, 96 tall."""

GRADIENT_16BIT = (1_000, 60_000)
"""The 16-bit PNG rises from the first to the second value, left to right."""

CMYK_COLOUR = (255, 0, 0, 0)
"""Pure cyan ink: must come out as RGB (0, 255, 255)."""


def write_bad_corpus(folder) -> dict[str, str]:
    """Write the corpus into ``folder``; return file name -> expected outcome.

    The outcome is ``"ok"`` for files that must be converted and kept, or the
    ImageRejected reason code the file must be rejected with.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}

    (folder / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "empty_file"

    whole = _jpeg_bytes(_noise_rgb(160, 120))
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    expected["truncated.jpg"] = "truncated"

    (folder / "text.jpg").write_text("this is not a JPEG, just text named like one\n" * 20)
    expected["text.jpg"] = "not_an_image"

    Image.new("CMYK", (64, 48), CMYK_COLOUR).save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = "ok"

    lo, hi = GRADIENT_16BIT
    ramp = np.linspace(lo, hi, 256).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (32, 1))).save(folder / "gradient16.png")
    expected["gradient16.png"] = "ok"

    Image.fromarray(_rgba_halves(64, 32), "RGBA").save(folder / "rgba.png")
    expected["rgba.png"] = "ok"

    _palette_with_transparency(32, 32).save(folder / "palette.png", transparency=0)
    expected["palette.png"] = "ok"

    _exif_rotated().save(folder / "exif_rotated.jpg", quality=95, exif=_orientation_exif(6))
    expected["exif_rotated.jpg"] = "ok"

    Image.new("RGB", (1, 1), (200, 100, 50)).save(folder / "one_pixel.png")
    expected["one_pixel.png"] = "too_small"

    (folder / "bomb.png").write_bytes(_bomb_png(BOMB_SIDE, BOMB_SIDE))
    expected["bomb.png"] = "decompression_bomb"

    return expected


def _noise_rgb(width: int, height: int) -> Image.Image:
    """Noise compresses badly, so half the JPEG's bytes is half its pixel data."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _rgba_halves(width: int, height: int) -> np.ndarray:
    """Left half opaque red, right half fully transparent green (green must not show)."""
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0, 255)
    pixels[:, width // 2 :] = (0, 255, 0, 0)
    return pixels


def _palette_with_transparency(width: int, height: int) -> Image.Image:
    """Index 0 (black in the palette) is transparent, index 1 opaque green: a left/right split."""
    image = Image.new("P", (width, height), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
    image.paste(1, (width // 2, 0, width, height))
    return image


def _exif_rotated() -> Image.Image:
    """Stored wide: left half red, right half blue.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the
    displayed image is tall with red on top and blue below.
    """
    width, height = EXIF_STORED_SIZE
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def _orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels, streamed.

    Rows are fed to zlib one block at a time, so neither the raw image (50 MB
    at 1 bit per pixel, 400 MB once PIL decodes it) nor the PNG is ever built
    in memory beyond a few hundred kB.
    """
    row = b"\x00" + bytes((width + 7) // 8)
    block_rows = 256
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, block_rows):
        parts.append(compressor.compress(row * min(block_rows, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
