"""Seeded synthetic street scenes for the bundled demo and for training its tiny detector.

Each scene is a simple but recognisable driving-camera view: sky, buildings, a road with lane
marks, a few trees and poles, and objects of four COCO-named classes (``car``, ``truck``,
``person``, ``bicycle``) in varied colours, sizes and positions, with limited occlusion.

A few *planted* objects are drawn in an unusual way for their class (a construction vehicle
with an excavator arm, a pink zebra-striped car, a car on giant wheels, a bicycle with rainbow
wheels, a person in a mascot costume). They still look enough like their class to be
detected, but they are rare, so the workflow should rank them as outliers.

Every object also gets a short English caption from a small grammar (:attr:`SceneObject.caption`,
:func:`grammar_captions`), which :func:`caption_kind` reads back as the kind it names; the demo's
tiny Qwen2-VL is trained on (crop, caption) pairs of :func:`object_crops`.

Everything is a pure function of the seed: the same seed gives the same bytes, and each image
has its own random stream (``numpy.random.default_rng([seed, stream, index])``) so that the
demo images, the detector's training set and its validation set never share scenes even when
they share a seed number.

Entry points: :func:`generate_scenes` (demo images + ground truth), :func:`write_yolo_dataset`
(ultralytics training data), :func:`object_crops` (captioned crops), :func:`render_scene` (one
scene in memory).

CLI: ``python -m rare_objects.demo.scenes --out DIR --n-images N --seed S``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from rare_objects.io import atomic

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

CLASS_NAMES: tuple[str, ...] = ("car", "truck", "person", "bicycle")
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

# Planted kinds: name -> (class it should be detected as, caption, concept name). A caption
# with "{colour}" names the colour the object was drawn in. Concept names are what the
# demo's concept analysis compares captions with (config.yaml, concepts.list).
PLANTED_KINDS: dict[str, tuple[str, str, str]] = {
    "construction_vehicle": (
        "truck",
        "a yellow construction vehicle with an excavator arm",
        "construction_vehicle",
    ),
    "zebra_pink_car": ("car", "a pink car with white zebra stripes", "zebra_striped_car"),
    "monster_car": ("car", "a {colour} car on giant monster wheels", "monster_truck"),
    "rainbow_bicycle": ("bicycle", "a bicycle with rainbow wheels", "rainbow_bicycle"),
    "mascot_person": ("person", "a person in a green mascot costume", "mascot_costume"),
}
# Ordinary objects: class -> caption (the grammar's other half).
ORDINARY_CAPTIONS: dict[str, str] = {
    "car": "a {colour} car",
    "truck": "a {colour} truck",
    "person": "a person in a {colour} shirt",
    "bicycle": "a {colour} bicycle",
}
# Words that only the caption of one planted kind uses: how a caption is read back as a kind.
_KIND_WORDS: dict[str, tuple[str, ...]] = {
    "construction_vehicle": ("construction", "excavator"),
    "zebra_pink_car": ("zebra", "stripes", "striped"),
    "monster_car": ("monster",),
    "rainbow_bicycle": ("rainbow",),
    "mascot_person": ("mascot", "costume"),
}
NOT_PLANTED = "none"

JPEG_QUALITY = 90
DEFAULT_SIZE = (640, 384)  # width, height
DEFAULT_CAMERA = "CAM_FRONT"
GROUND_TRUTH_NAME = "ground_truth.csv"
COCO_GROUND_TRUTH_NAME = "ground_truth.coco.json"  # the evaluation stage's input (config.yaml)

# Random streams (second element of the per-image seed sequence).
STREAM_DEMO, STREAM_TRAIN, STREAM_VAL, STREAM_CLIP, STREAM_VLM, STREAM_VLM_HELDOUT = (
    0,
    1,
    2,
    3,
    4,
    5,
)

_SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges, same look at every output size

# Object geometry: height at the nearest depth as a fraction of image height, width/height.
_BASE_HEIGHT = {"car": 0.27, "truck": 0.40, "person": 0.42, "bicycle": 0.25}
_ASPECT = {"car": 2.3, "truck": 2.6, "person": 0.40, "bicycle": 1.7}
_CLASS_WEIGHTS = {"car": 0.40, "truck": 0.15, "person": 0.25, "bicycle": 0.20}
_PLANTED_GEOMETRY = {  # (base height, aspect)
    "construction_vehicle": (0.50, 2.0),
    "zebra_pink_car": (0.27, 2.3),
    "monster_car": (0.36, 1.5),
    "rainbow_bicycle": (0.33, 1.7),
    "mascot_person": (0.46, 0.55),
}

# Named colours (the captions use the names).
_VEHICLE_COLOURS = {
    "white": (235, 235, 235),
    "black": (30, 30, 34),
    "silver": (170, 174, 180),
    "grey": (110, 112, 118),
    "red": (190, 30, 35),
    "blue": (35, 70, 170),
    "green": (40, 120, 60),
    "brown": (110, 75, 45),
}
_TRUCK_COLOURS = {
    k: _VEHICLE_COLOURS[k] for k in ("white", "silver", "grey", "red", "blue", "green")
}
_SHIRT_COLOURS = {
    "white": (230, 230, 230),
    "black": (35, 35, 40),
    "red": (200, 40, 40),
    "blue": (40, 80, 190),
    "green": (50, 140, 70),
    "grey": (120, 120, 125),
    "orange": (225, 120, 40),
}
_PANTS = [(40, 45, 70), (30, 30, 30), (80, 70, 60), (60, 80, 130), (140, 120, 90)]
_SKIN = [(240, 200, 170), (210, 160, 120), (160, 110, 75), (100, 70, 50)]
_FRAME_COLOURS = {
    "black": (25, 25, 25),
    "red": (190, 35, 35),
    "blue": (40, 80, 180),
    "silver": (170, 170, 175),
    "green": (40, 120, 60),
}
_MONSTER_COLOURS = {"red": (200, 30, 30), "blue": (35, 70, 170), "black": (30, 30, 34)}
_CONSTRUCTION_YELLOW = (250, 195, 0)
_HOT_PINK = (250, 70, 170)
_RAINBOW = [
    (230, 30, 30),
    (245, 140, 20),
    (245, 220, 20),
    (40, 180, 60),
    (30, 110, 230),
    (140, 50, 200),
]


@dataclass
class SceneObject:
    """One object drawn in a scene; the box is in output-image pixels."""

    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float
    colour: str
    planted_kind: str = NOT_PLANTED
    attrs: dict = field(default_factory=dict)

    @property
    def planted(self) -> bool:
        return self.planted_kind != NOT_PLANTED

    @property
    def kind(self) -> str:
        """The planted kind, or the class name of an ordinary object."""
        return self.planted_kind if self.planted else self.class_name

    @property
    def caption(self) -> str:
        """The grammar's short English description ("a red car", "a bicycle with rainbow wheels")."""
        template = (
            PLANTED_KINDS[self.planted_kind][1]
            if self.planted
            else ORDINARY_CAPTIONS[self.class_name]
        )
        return _with_articles(template.format(colour=self.colour))


def _with_articles(text: str) -> str:
    """ "a orange shirt" -> "an orange shirt"."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def caption_kind(caption: str | None) -> str | None:
    """The kind a caption names: a planted kind, else a class of :data:`CLASS_NAMES`, else None.

    Reads any text, not only the grammar's: a planted kind's own words win (a "car with zebra
    stripes" is a ``zebra_pink_car``), then the first class word.
    """
    if not isinstance(caption, str):
        return None
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    for kind, keys in _KIND_WORDS.items():
        if any(k in words for k in keys):
            return kind
    for word in words:
        if word in CLASS_IDS:
            return word
    return None


def grammar_captions() -> list[str]:
    """Every caption the grammar can write (all colours of every kind)."""
    colours = {
        "car": _VEHICLE_COLOURS,
        "truck": _TRUCK_COLOURS,
        "person": _SHIRT_COLOURS,
        "bicycle": _FRAME_COLOURS,
        "monster_car": _MONSTER_COLOURS,
    }
    out = []
    for cls, template in ORDINARY_CAPTIONS.items():
        out += [_with_articles(template.format(colour=c)) for c in colours[cls]]
    for kind, (_cls, template, _concept) in PLANTED_KINDS.items():
        out += sorted(
            {_with_articles(template.format(colour=c)) for c in colours.get(kind, {"": None})}
        )
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _rgb(c: Sequence[float]) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v)))) for v in c)  # type: ignore[return-value]


def _jitter(
    rng: np.random.Generator, colour: Sequence[int], amount: float = 18
) -> tuple[int, int, int]:
    return _rgb(np.asarray(colour, dtype=float) + rng.uniform(-amount, amount, size=3))


def _shade(colour: Sequence[int], factor: float) -> tuple[int, int, int]:
    return _rgb(np.asarray(colour, dtype=float) * factor)


def _pick(rng: np.random.Generator, mapping: dict) -> tuple[str, tuple[int, int, int]]:
    keys = list(mapping)
    key = keys[int(rng.integers(len(keys)))]
    return key, mapping[key]


def _draw_background(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, horizon: float
) -> None:
    # Sky: vertical gradient in one of a few weathers.
    skies = [
        ((105, 155, 225), (190, 215, 245)),  # clear
        ((150, 155, 165), (210, 210, 215)),  # overcast
        ((70, 80, 140), (240, 170, 120)),  # dusk
    ]
    top, bottom = skies[int(rng.choice(3, p=[0.55, 0.3, 0.15]))]
    top, bottom = _jitter(rng, top, 10), _jitter(rng, bottom, 10)
    hz = int(horizon)
    for y in range(hz + 1):
        t = y / max(1, hz)
        draw.line([(0, y), (w, y)], fill=_rgb([a + (b - a) * t for a, b in zip(top, bottom)]))

    # Buildings along the horizon, with window grids.
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = rng.uniform(0.07, 0.22) * w
        bh = rng.uniform(0.08, 0.36) * h
        base = np.array([rng.uniform(90, 200)] * 3) + rng.uniform(-25, 25, size=3)
        wall = _rgb(base)
        draw.rectangle([x, horizon - bh, x + bw, horizon], fill=wall)
        win = _shade(wall, 0.55) if rng.random() < 0.7 else _rgb((200, 210, 225))
        step_x = max(6.0, bw / rng.integers(3, 7))
        step_y = max(6.0, rng.uniform(0.04, 0.07) * h)
        wy = horizon - bh + step_y * 0.5
        while wy + step_y * 0.5 < horizon - step_y * 0.3:
            wx = x + step_x * 0.3
            while wx + step_x * 0.5 < x + bw:
                draw.rectangle([wx, wy, wx + step_x * 0.45, wy + step_y * 0.5], fill=win)
                wx += step_x
            wy += step_y
        x += bw + rng.uniform(0, 0.03) * w

    # Ground: pavement / verge, then the road as a trapezoid to a vanishing point.
    verge = _jitter(rng, (150, 150, 145) if rng.random() < 0.6 else (95, 130, 75), 12)
    draw.rectangle([0, horizon, w, h], fill=verge)
    vx = w * rng.uniform(0.4, 0.6)
    road = _jitter(rng, (85, 85, 90), 12)
    half_bottom = w * rng.uniform(0.55, 0.8)
    draw.polygon(
        [
            (vx - 0.03 * w, horizon),
            (vx + 0.03 * w, horizon),
            (vx + half_bottom, h),
            (vx - half_bottom, h),
        ],
        fill=road,
    )
    # Kerb lines and dashed lane marks.
    lw = max(2, int(0.006 * w))
    for side in (-1, 1):
        draw.line(
            [(vx + side * 0.03 * w, horizon), (vx + side * half_bottom, h)],
            fill=(200, 200, 195),
            width=lw,
        )
    for frac in (-0.33, 0.0, 0.33):
        bx = vx + frac * half_bottom * 2
        t = 0.05
        while t < 1.0:
            t2 = min(1.0, t + 0.06 + 0.1 * t)
            p1 = (vx + (bx - vx) * t, horizon + (h - horizon) * t)
            p2 = (vx + (bx - vx) * t2, horizon + (h - horizon) * t2)
            draw.line([p1, p2], fill=(235, 235, 225), width=max(1, int(lw * (0.5 + 2 * t))))
            t = t2 + 0.05 + 0.12 * t

    # Distractors: trees and lamp posts.
    for _ in range(int(rng.integers(0, 4))):
        tx = rng.uniform(0, w)
        depth = rng.uniform(0.0, 0.35)
        ty = horizon + depth * (h - horizon)
        th = (0.25 + 0.5 * depth) * h
        if rng.random() < 0.6:
            tw = th * 0.08
            draw.rectangle([tx - tw, ty - th * 0.5, tx + tw, ty], fill=(90, 60, 35))
            r = th * rng.uniform(0.22, 0.3)
            draw.ellipse(
                [tx - r, ty - th * 0.5 - 1.6 * r, tx + r, ty - th * 0.5 + 0.4 * r],
                fill=_jitter(rng, (50, 115, 50), 20),
            )
        else:
            pw = max(2.0, th * 0.02)
            draw.rectangle([tx - pw, ty - th, tx + pw, ty], fill=(70, 70, 75))
            draw.rectangle([tx - pw, ty - th, tx + th * 0.15, ty - th + 2 * pw], fill=(70, 70, 75))


def _wheel(draw, cx, cy, r, tyre=(25, 25, 25), hub=(160, 160, 165)) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tyre)
    draw.ellipse([cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45], fill=hub)


def _mirror(points, x1, x2, flip):
    if not flip:
        return points
    return [(x1 + x2 - px, py) for px, py in points]


def _draw_car(draw, rng, box, colour, flip, stripes=None, wheel_scale=1.0) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if wheel_scale > 1.0:  # monster car: body on top, giant wheels below
        r = h * 0.27
        body_top, body_bot = y1 + 0.22 * h, y1 + 0.55 * h
        cabin_top = y1
        wheels = [x1 + r, x2 - r]
        # suspension struts
        for wx in wheels:
            draw.rectangle([wx - r * 0.12, body_bot - 2, wx + r * 0.12, y2 - r], fill=(60, 60, 60))
    else:
        r = h * 0.21
        body_top, body_bot = y1 + 0.42 * h, y2 - r * 0.6
        cabin_top = y1
        wheels = [x1 + 0.2 * w, x2 - 0.2 * w]
    body_h = body_bot - body_top
    draw.rounded_rectangle([x1, body_top, x2, body_bot], radius=max(1, body_h * 0.3), fill=colour)
    if stripes:
        n = 9
        for i in range(1, n, 2):
            sx1 = x1 + w * i / n
            draw.rectangle(
                [sx1, body_top + body_h * 0.12, sx1 + w / n, body_bot - body_h * 0.12], fill=stripes
            )
    front, back = rng.uniform(0.22, 0.32), rng.uniform(0.05, 0.2)
    cabin = [
        (x1 + back * w, body_top),
        (x1 + (back + 0.12) * w, cabin_top),
        (x2 - (front + 0.12) * w, cabin_top),
        (x2 - front * w, body_top),
    ]
    draw.polygon(_mirror(cabin, x1, x2, flip), fill=colour)
    glass = (150, 180, 205) if rng.random() < 0.6 else (60, 70, 85)
    inset = (body_top - cabin_top) * 0.18
    mid = x1 + (back + 0.12 + (1 - front - back - 0.24) * 0.55) * w
    win1 = [
        (x1 + (back + 0.04) * w, body_top - inset * 0.3),
        (x1 + (back + 0.13) * w, cabin_top + inset),
        (mid - 0.01 * w, cabin_top + inset),
        (mid - 0.01 * w, body_top - inset * 0.3),
    ]
    win2 = [
        (mid + 0.01 * w, body_top - inset * 0.3),
        (mid + 0.01 * w, cabin_top + inset),
        (x2 - (front + 0.13) * w, cabin_top + inset),
        (x2 - (front + 0.03) * w, body_top - inset * 0.3),
    ]
    draw.polygon(_mirror(win1, x1, x2, flip), fill=glass)
    draw.polygon(_mirror(win2, x1, x2, flip), fill=glass)
    # lights
    lh = body_h * 0.25
    head = [(x2 - 0.05 * w, body_top + body_h * 0.2), (x2, body_top + body_h * 0.2 + lh)]
    tail = [(x1, body_top + body_h * 0.2), (x1 + 0.04 * w, body_top + body_h * 0.2 + lh)]
    if flip:
        head, tail = (
            [(x1, head[0][1]), (x1 + 0.05 * w, head[1][1])],
            [(x2 - 0.04 * w, tail[0][1]), (x2, tail[1][1])],
        )
    draw.rectangle(head, fill=(250, 240, 170))
    draw.rectangle(tail, fill=(200, 20, 20))
    for wx in wheels:
        _wheel(draw, wx, y2 - r, r)


def _draw_truck(draw, rng, box, cab_colour, cargo_colour, flip) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    r = h * 0.14
    bottom = y2 - r * 0.8
    cab_w = 0.24 * w
    # cargo box (back), cab (front)
    cargo = [(x1, y1), (x2 - cab_w - 0.02 * w, bottom)]
    cab_poly = [
        (x2 - cab_w, y1 + 0.28 * h),
        (x2 - cab_w * 0.25, y1 + 0.28 * h),
        (x2, y1 + 0.5 * h),
        (x2, bottom),
        (x2 - cab_w, bottom),
    ]
    if flip:
        cargo = [(x1 + cab_w + 0.02 * w, y1), (x2, bottom)]
    draw.rectangle(cargo, fill=cargo_colour)
    draw.rectangle(
        [
            cargo[0][0] + 0.02 * w,
            cargo[0][1] + 0.04 * h,
            cargo[1][0] - 0.02 * w,
            cargo[0][1] + 0.07 * h,
        ],
        fill=_shade(cargo_colour, 0.8),
    )
    draw.polygon(_mirror(cab_poly, x1, x2, flip), fill=cab_colour)
    window = [
        (x2 - cab_w * 0.8, y1 + 0.33 * h),
        (x2 - cab_w * 0.3, y1 + 0.33 * h),
        (x2 - cab_w * 0.05, y1 + 0.5 * h),
        (x2 - cab_w * 0.8, y1 + 0.5 * h),
    ]
    draw.polygon(_mirror(window, x1, x2, flip), fill=(140, 170, 200))
    chassis = [(x1 + 0.01 * w, bottom - 0.05 * h), (x2 - 0.01 * w, bottom)]
    draw.rectangle(chassis, fill=(40, 40, 40))
    for fx in (0.12, 0.3, 0.86):
        cx = x1 + fx * w if not flip else x2 - fx * w
        _wheel(draw, cx, y2 - r, r)


def _draw_construction_vehicle(draw, rng, box, flip) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    yellow = _jitter(rng, _CONSTRUCTION_YELLOW, 8)
    # tracks
    tr_top = y2 - 0.2 * h
    draw.rounded_rectangle([x1, tr_top, x1 + 0.62 * w, y2], radius=0.1 * h, fill=(35, 35, 35))
    for i in range(5):
        cx = x1 + 0.06 * w + i * 0.125 * w
        r = 0.07 * h
        draw.ellipse([cx - r, y2 - 0.1 * h - r, cx + r, y2 - 0.1 * h + r], fill=(90, 90, 90))
    # body with hazard stripes, cab
    body = [x1 + 0.02 * w, y1 + 0.5 * h, x1 + 0.6 * w, tr_top]
    body_m = _mirror([(body[0], body[1]), (body[2], body[3])], x1, x2, flip)
    bx = sorted([body_m[0][0], body_m[1][0]])
    draw.rectangle([bx[0], body[1], bx[1], body[3]], fill=yellow)
    for i in range(6):
        sx = bx[0] + (bx[1] - bx[0]) * i / 6
        draw.polygon(
            [
                (sx, body[3]),
                (sx + 0.04 * w, body[3]),
                (sx + 0.07 * w, body[3] - 0.06 * h),
                (sx + 0.03 * w, body[3] - 0.06 * h),
            ],
            fill=(20, 20, 20),
        )
    cab = [(x1 + 0.05 * w, y1 + 0.25 * h), (x1 + 0.3 * w, y1 + 0.5 * h)]
    cab = _mirror(cab, x1, x2, flip)
    cx0, cx1 = sorted([cab[0][0], cab[1][0]])
    draw.rectangle([cx0, y1 + 0.25 * h, cx1, y1 + 0.5 * h], fill=yellow)
    draw.rectangle(
        [cx0 + 0.03 * w, y1 + 0.29 * h, cx1 - 0.03 * w, y1 + 0.45 * h], fill=(120, 150, 170)
    )
    # boom arm up, stick down, bucket
    thick = max(2, int(0.07 * h))
    p0, p1, p2 = (
        (x1 + 0.45 * w, y1 + 0.5 * h),
        (x1 + 0.72 * w, y1 + thick * 0.5),
        (x2 - 0.1 * w, y1 + 0.55 * h),
    )
    draw.line(_mirror([p0, p1, p2], x1, x2, flip), fill=yellow, width=thick, joint="curve")
    bucket = [
        (x2 - 0.2 * w, y1 + 0.52 * h),
        (x2, y1 + 0.55 * h),
        (x2 - 0.04 * w, y1 + 0.8 * h),
        (x2 - 0.16 * w, y1 + 0.75 * h),
    ]
    draw.polygon(_mirror(bucket, x1, x2, flip), fill=(60, 55, 45))


def _draw_person(draw, rng, box, shirt, mascot=False) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    pants = _PANTS[int(rng.integers(len(_PANTS)))]
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    head_d = (0.34 if mascot else 0.15) * h
    if mascot:
        pants, skin = shirt, _shade(shirt, 1.15)
    torso_top = y1 + head_d * 0.95
    torso_bot = y1 + 0.57 * h
    tw = w * (0.62 if mascot else 0.52)
    # legs (walking or standing)
    stride = rng.uniform(0.0, 0.22) * w
    lw = tw * 0.4
    draw.polygon(
        [
            (cx - tw / 2, torso_bot),
            (cx - tw / 2 + lw, torso_bot),
            (cx - w / 2 + stride + lw, y2),
            (cx - w / 2 + stride, y2),
        ],
        fill=pants,
    )
    draw.polygon(
        [
            (cx + tw / 2 - lw, torso_bot),
            (cx + tw / 2, torso_bot),
            (cx + w / 2 - stride, y2),
            (cx + w / 2 - stride - lw, y2),
        ],
        fill=pants,
    )
    # arms (full box width) and torso
    aw = (w - tw) / 2
    draw.rectangle([x1, torso_top + 0.03 * h, x1 + aw + 1, torso_top + 0.32 * h], fill=shirt)
    draw.rectangle([x2 - aw - 1, torso_top + 0.03 * h, x2, torso_top + 0.32 * h], fill=shirt)
    draw.rounded_rectangle(
        [cx - tw / 2, torso_top, cx + tw / 2, torso_bot], radius=tw * 0.2, fill=shirt
    )
    if mascot:  # purple spots
        for _ in range(5):
            sx, sy = rng.uniform(cx - tw / 3, cx + tw / 3), rng.uniform(torso_top, torso_bot)
            r = tw * 0.09
            draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(130, 40, 170))
    # head
    draw.ellipse([cx - head_d / 2, y1, cx + head_d / 2, y1 + head_d], fill=skin)
    if mascot:  # big eyes
        for ex in (-0.18, 0.18):
            r = head_d * 0.12
            draw.ellipse(
                [
                    cx + ex * head_d - r,
                    y1 + head_d * 0.35 - r,
                    cx + ex * head_d + r,
                    y1 + head_d * 0.35 + r,
                ],
                fill=(255, 255, 255),
            )
    elif rng.random() < 0.7:  # hair
        hair = (40, 30, 20) if rng.random() < 0.7 else (200, 170, 90)
        draw.chord([cx - head_d / 2, y1, cx + head_d / 2, y1 + head_d], 180, 360, fill=hair)


def _draw_bicycle(draw, rng, box, frame, flip, rainbow=False) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    r = min(0.36 * h, 0.27 * w)
    tyre = max(2, int(r * 0.14))
    rear, front = (x1 + r, y2 - r), (x2 - r, y2 - r)
    for cx, cy in (rear, front):
        if rainbow:
            for i, col in enumerate(_RAINBOW):
                draw.pieslice([cx - r, cy - r, cx + r, cy + r], i * 60, (i + 1) * 60, fill=col)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(20, 20, 20), width=tyre)
        draw.ellipse([cx - r * 0.1, cy - r * 0.1, cx + r * 0.1, cy + r * 0.1], fill=(120, 120, 120))
    crank = (x1 + 0.47 * w, y2 - r * 0.9)
    seat = (x1 + 0.36 * w, y1 + 0.2 * h)
    head = (x2 - 0.33 * w, y1 + 0.17 * h)
    bar = (x2 - 0.36 * w, y1 + 0.02 * h)
    lw = max(2, int(0.045 * h))
    pts = lambda ps: _mirror(ps, x1, x2, flip)  # noqa: E731
    draw.line(pts([rear, seat, crank, rear]), fill=frame, width=lw)
    draw.line(pts([seat, head, crank]), fill=frame, width=lw)
    draw.line(pts([head, front]), fill=frame, width=lw)
    draw.line(pts([head, bar]), fill=frame, width=lw)
    hb = pts([(bar[0] - 0.05 * w, y1 + lw / 2), (bar[0] + 0.06 * w, y1 + lw / 2)])
    draw.line(hb, fill=(30, 30, 30), width=lw)
    s = pts([(seat[0] - 0.06 * w, seat[1] - lw), (seat[0] + 0.05 * w, seat[1] - lw)])
    draw.line(s, fill=(30, 30, 30), width=lw + 1)


def _draw_object(draw, rng, obj: SceneObject, scale: float) -> None:
    box = (obj.x1 * scale, obj.y1 * scale, obj.x2 * scale, obj.y2 * scale)
    a = obj.attrs
    if obj.planted_kind == "construction_vehicle":
        _draw_construction_vehicle(draw, rng, box, a["flip"])
    elif obj.planted_kind == "zebra_pink_car":
        _draw_car(draw, rng, box, a["rgb"], a["flip"], stripes=(250, 250, 250))
    elif obj.planted_kind == "monster_car":
        _draw_car(draw, rng, box, a["rgb"], a["flip"], wheel_scale=2.0)
    elif obj.planted_kind == "rainbow_bicycle":
        _draw_bicycle(draw, rng, box, a["rgb"], a["flip"], rainbow=True)
    elif obj.planted_kind == "mascot_person":
        _draw_person(draw, rng, box, a["rgb"], mascot=True)
    elif obj.class_name == "car":
        _draw_car(draw, rng, box, a["rgb"], a["flip"])
    elif obj.class_name == "truck":
        _draw_truck(draw, rng, box, a["cab_rgb"], a["rgb"], a["flip"])
    elif obj.class_name == "person":
        _draw_person(draw, rng, box, a["rgb"])
    elif obj.class_name == "bicycle":
        _draw_bicycle(draw, rng, box, a["rgb"], a["flip"])
    else:  # pragma: no cover - guarded by the vocabulary
        raise ValueError(obj.class_name)


def _new_object(rng, class_name, planted_kind, w, h, horizon, near_min) -> SceneObject:
    """Sample size, position and colours of one object (box in output pixels)."""
    if planted_kind != NOT_PLANTED:
        base_h, aspect = _PLANTED_GEOMETRY[planted_kind]
        depth = rng.uniform(max(near_min, 0.6), 1.0)  # planted ones are near enough to be seen
    else:
        base_h, aspect = _BASE_HEIGHT[class_name], _ASPECT[class_name]
        depth = rng.uniform(near_min, 1.0)
    y2 = horizon + depth * (h - horizon) - rng.uniform(0, 0.02) * h
    bh = base_h * depth * h * rng.uniform(0.88, 1.12)
    bw = min(bh * aspect * rng.uniform(0.9, 1.1), 0.9 * w)
    cx = rng.uniform(bw / 2 + 2, w - bw / 2 - 2)
    y1 = max(1.0, y2 - bh)
    attrs = {"flip": bool(rng.random() < 0.5), "depth": depth}
    if planted_kind == "zebra_pink_car":
        colour, attrs["rgb"] = "pink", _jitter(rng, _HOT_PINK, 10)
    elif planted_kind == "construction_vehicle":
        colour = "yellow"
    elif planted_kind == "monster_car":
        colour, rgb = _pick(rng, _MONSTER_COLOURS)
        attrs["rgb"] = _jitter(rng, rgb, 10)
    elif planted_kind == "rainbow_bicycle":
        colour, attrs["rgb"] = "rainbow", (245, 245, 245)
    elif planted_kind == "mascot_person":
        colour, attrs["rgb"] = "green", _jitter(rng, (60, 220, 60), 10)
    elif class_name == "car":
        colour, rgb = _pick(rng, _VEHICLE_COLOURS)
        attrs["rgb"] = _jitter(rng, rgb)
    elif class_name == "truck":
        colour, rgb = _pick(rng, _TRUCK_COLOURS)
        attrs["rgb"] = _jitter(rng, rgb)
        attrs["cab_rgb"] = (
            _jitter(rng, _pick(rng, _TRUCK_COLOURS)[1]) if rng.random() < 0.5 else attrs["rgb"]
        )
    elif class_name == "person":
        colour, rgb = _pick(rng, _SHIRT_COLOURS)
        attrs["rgb"] = _jitter(rng, rgb)
    else:
        colour, rgb = _pick(rng, _FRAME_COLOURS)
        attrs["rgb"] = _jitter(rng, rgb)
    return SceneObject(class_name, cx - bw / 2, y1, cx + bw / 2, y2, colour, planted_kind, attrs)


def _overlap_ok(
    a: SceneObject, b: SceneObject, max_iou: float = 0.2, max_cover: float = 0.35
) -> bool:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    if inter == 0:
        return True
    area_a = (a.x2 - a.x1) * (a.y2 - a.y1)
    area_b = (b.x2 - b.x1) * (b.y2 - b.y1)
    iou = inter / (area_a + area_b - inter)
    return iou <= max_iou and inter / min(area_a, area_b) <= max_cover


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = DEFAULT_SIZE,
    planted_kind: str = NOT_PLANTED,
    objects_per_image: tuple[int, int] = (1, 6),
    noise: float = 3.0,
) -> tuple[Image.Image, list[SceneObject]]:
    """Draw one scene. Returns the RGB image and its objects (boxes in pixels of ``size``).

    ``planted_kind`` (a key of :data:`PLANTED_KINDS`) adds one unusual object to the scene.
    """
    w, h = int(size[0]), int(size[1])
    ss = _SUPERSAMPLE
    horizon = h * rng.uniform(0.38, 0.48)
    image = Image.new("RGB", (w * ss, h * ss))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, rng, w * ss, h * ss, horizon * ss)

    wanted: list[tuple[str, str]] = []
    if planted_kind != NOT_PLANTED:
        wanted.append((PLANTED_KINDS[planted_kind][0], planted_kind))
    n = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
    classes = list(_CLASS_WEIGHTS)
    probs = np.array(list(_CLASS_WEIGHTS.values()))
    for _ in range(max(0, n - len(wanted))):
        wanted.append((classes[int(rng.choice(len(classes), p=probs / probs.sum()))], NOT_PLANTED))

    placed: list[SceneObject] = []
    for class_name, kind in wanted:
        for _attempt in range(30):
            obj = _new_object(rng, class_name, kind, w, h, horizon, near_min=0.3)
            if all(_overlap_ok(obj, other) for other in placed):
                placed.append(obj)
                break
        else:
            if kind != NOT_PLANTED:  # the planted object goes first, so this cannot happen
                raise RuntimeError("could not place the planted object")

    # Far objects first so that near ones occlude them.
    placed.sort(key=lambda o: o.y2)
    for obj in placed:
        _draw_object(draw, rng, obj, ss)

    image = image.reduce(ss)
    arr = np.asarray(image, dtype=np.float32)
    arr = arr * rng.uniform(0.85, 1.12)  # exposure
    if noise > 0:
        arr = arr + rng.normal(0.0, noise, size=arr.shape)
    image = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")
    for obj in placed:  # round boxes to what the pixels show
        obj.x1, obj.y1 = round(max(0.0, obj.x1), 2), round(max(0.0, obj.y1), 2)
        obj.x2, obj.y2 = round(min(float(w), obj.x2), 2), round(min(float(h), obj.y2), 2)
    return image, placed


# --------------------------------------------------------------------------------------------
# Demo images with ground truth
# --------------------------------------------------------------------------------------------

GT_COLUMNS = [
    "image_path",
    "folder",
    "camera",
    "image_width",
    "image_height",
    "object_index",
    "class_id",
    "class_name",
    "x1",
    "y1",
    "x2",
    "y2",
    "colour",
    "planted",
    "planted_kind",
    "caption",
]


def _folder_names(folders: int | Sequence[str]) -> list[str]:
    if isinstance(folders, int):
        if folders < 1:
            raise ValueError("folders must be >= 1")
        return [f"scene-{i + 1:04d}" for i in range(folders)]
    names = [str(f) for f in folders]
    if not names:
        raise ValueError("folders must not be empty")
    return names


def _planted_plan(
    rng: np.random.Generator, n_images: int, planted_fraction: float
) -> dict[int, str]:
    """Which images get a planted object, and of which kind (kinds cycle so that all appear)."""
    if planted_fraction <= 0 or n_images == 0:
        return {}
    n_planted = min(n_images, max(1, int(round(planted_fraction * n_images))))
    images = sorted(int(i) for i in rng.choice(n_images, size=n_planted, replace=False))
    kinds = list(PLANTED_KINDS)
    order = [kinds[int(i)] for i in rng.permutation(len(kinds))]
    return {img: order[k % len(order)] for k, img in enumerate(images)}


def _write_jpeg(image: Image.Image, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)


def generate_scenes(
    out_dir: str | os.PathLike,
    n_images: int,
    seed: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    folders: int | Sequence[str] = 3,
    planted_fraction: float = 0.08,
    camera: str = DEFAULT_CAMERA,
    objects_per_image: tuple[int, int] = (1, 6),
) -> pd.DataFrame:
    """Write ``n_images`` demo scenes under ``out_dir`` and return their ground truth.

    Layout: ``out_dir/<folder>/<camera>/<folder>__<camera>__<frame:06d>.jpg``; images are split
    into consecutive blocks, one per folder (``folders``: a count, giving ``scene-0001`` ..., or
    explicit names). ``planted_fraction`` is the fraction of *images* that get one planted
    unusual object (at least one when > 0); with 1 to 6 objects an image, 0.08 makes about 2%
    of objects planted (5 of ~210 in a 60-image demo). The ground truth (one row per object,
    boxes in pixels, ``image_path`` relative to ``out_dir``) is also written to
    ``out_dir/ground_truth.csv``. Same arguments, same bytes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _folder_names(folders)
    plan = _planted_plan(
        np.random.default_rng([seed, STREAM_DEMO, 2**31 - 1]), n_images, planted_fraction
    )
    image_paths = _image_paths(names, n_images, camera)
    rows = []
    for idx, rel in enumerate(map(Path, image_paths)):
        folder = rel.parts[0]
        rng = np.random.default_rng([seed, STREAM_DEMO, idx])
        image, objects = render_scene(rng, size, plan.get(idx, NOT_PLANTED), objects_per_image)
        _write_jpeg(image, out / rel)
        for k, obj in enumerate(objects):
            rows.append(
                {
                    "image_path": rel.as_posix(),
                    "folder": folder,
                    "camera": camera,
                    "image_width": int(size[0]),
                    "image_height": int(size[1]),
                    "object_index": k,
                    "class_id": CLASS_IDS[obj.class_name],
                    "class_name": obj.class_name,
                    "x1": obj.x1,
                    "y1": obj.y1,
                    "x2": obj.x2,
                    "y2": obj.y2,
                    "colour": obj.colour,
                    "planted": obj.planted,
                    "planted_kind": obj.planted_kind,
                    "caption": obj.caption,
                }
            )
    gt = pd.DataFrame(rows, columns=GT_COLUMNS)
    with atomic.atomic_path(out / GROUND_TRUTH_NAME) as tmp:
        gt.to_csv(tmp, index=False, float_format="%.2f", lineterminator="\n")
    coco = coco_ground_truth(gt, image_paths, size)
    atomic.write_text(out / COCO_GROUND_TRUTH_NAME, json.dumps(coco, indent=1) + "\n")
    return gt


def _image_paths(names: list[str], n_images: int, camera: str) -> list[str]:
    """Every demo image's path relative to the output folder, in generation order."""
    per_folder = math.ceil(n_images / len(names)) if n_images else 0
    paths = []
    for idx in range(n_images):
        folder = names[min(idx // max(1, per_folder), len(names) - 1)]
        frame = idx - names.index(folder) * per_folder
        paths.append(f"{folder}/{camera}/{folder}__{camera}__{frame:06d}.jpg")
    return paths


def coco_ground_truth(gt: pd.DataFrame, image_paths: list[str], size: tuple[int, int]) -> dict:
    """The demo's ground truth as a COCO detection file: the four classes and each planted
    kind as its own category (a planted monster car is a ``monster_car``, not a car), every
    image listed (those without objects too), boxes ``[x, y, w, h]``."""
    names = [*CLASS_NAMES, *PLANTED_KINDS]
    category_id = {name: i + 1 for i, name in enumerate(names)}
    image_id = {path: i + 1 for i, path in enumerate(image_paths)}
    kinds = np.where(gt["planted"], gt["planted_kind"], gt["class_name"])
    annotations = [
        {
            "id": i + 1,
            "image_id": image_id[row.image_path],
            "category_id": category_id[kind],
            "bbox": [
                round(row.x1, 2),
                round(row.y1, 2),
                round(row.x2 - row.x1, 2),
                round(row.y2 - row.y1, 2),
            ],
            "area": round((row.x2 - row.x1) * (row.y2 - row.y1), 2),
            "iscrowd": 0,
        }
        for i, (row, kind) in enumerate(zip(gt.itertuples(index=False), kinds))
    ]
    return {
        "info": {"description": "rare-object-mining demo scenes (rare_objects.demo.scenes)"},
        "images": [
            {"id": image_id[p], "file_name": p, "width": int(size[0]), "height": int(size[1])}
            for p in image_paths
        ],
        "annotations": annotations,
        "categories": [
            {
                "id": category_id[n],
                "name": n,
                "supercategory": "planted" if n in PLANTED_KINDS else "ordinary",
            }
            for n in names
        ],
    }


def read_ground_truth(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``ground_truth.csv`` back with the dtypes :func:`generate_scenes` returned."""
    gt = pd.read_csv(Path(out_dir) / GROUND_TRUTH_NAME, keep_default_na=False)
    gt["planted"] = gt["planted"].astype(str).str.lower().eq("true")
    return gt


# --------------------------------------------------------------------------------------------
# Object crops with captions
# --------------------------------------------------------------------------------------------


def object_crops(
    seed: int,
    stream: int,
    n_scenes: int,
    planted_share: float = 0.5,
    jitter: float | tuple[float, float] = 0.08,
    size: tuple[int, int] = DEFAULT_SIZE,
    min_side: int = 8,
):
    """Yield ``(crop, object)`` for every object of ``n_scenes`` generated scenes.

    ``planted_share`` of the scenes hold one planted object (kinds in turn), far more than
    the demo, so that a model trained on the crops sees every kind often. Each crop's box is
    moved by up to ``jitter`` of the object's size on each side, as a detector's box would
    be; a pair ``(inward, outward)`` moves each side by up to ``inward`` into the object and
    ``outward`` away from it (a detector's box is more often too large than too small). Objects smaller than ``min_side`` pixels are left out. Scenes come from the random
    stream ``stream`` (:data:`STREAM_VLM` for training, :data:`STREAM_VLM_HELDOUT` for a
    held-out check), never from the demo's own.
    """
    rng = np.random.default_rng([seed, stream, 2**31 - 1])
    kinds = list(PLANTED_KINDS)
    n_planted = 0
    for idx in range(n_scenes):
        scene_rng = np.random.default_rng([seed, stream, idx])
        kind = NOT_PLANTED
        if rng.random() < planted_share:
            kind = kinds[n_planted % len(kinds)]
            n_planted += 1
        image, objects = render_scene(scene_rng, size, kind)
        for obj in objects:
            w, h = obj.x2 - obj.x1, obj.y2 - obj.y1
            if min(w, h) < min_side:
                continue
            if isinstance(jitter, tuple | list):
                # each side: up to jitter[0] inward, jitter[1] outward
                d = rng.uniform(-jitter[0], jitter[1], size=4) * np.array([-w, -h, w, h])
            else:
                d = rng.uniform(-jitter, jitter, size=4) * np.array([w, h, w, h])
            box = (
                max(0.0, obj.x1 + d[0]),
                max(0.0, obj.y1 + d[1]),
                min(float(size[0]), obj.x2 + d[2]),
                min(float(size[1]), obj.y2 + d[3]),
            )
            yield (
                image.crop(
                    (int(box[0]), int(box[1]), int(math.ceil(box[2])), int(math.ceil(box[3])))
                ),
                obj,
            )


# --------------------------------------------------------------------------------------------
# YOLO training data
# --------------------------------------------------------------------------------------------


def _yolo_label_lines(objects: list[SceneObject], w: int, h: int) -> str:
    lines = []
    for obj in objects:
        cx, cy = (obj.x1 + obj.x2) / 2 / w, (obj.y1 + obj.y2) / 2 / h
        bw, bh = (obj.x2 - obj.x1) / w, (obj.y2 - obj.y1) / h
        lines.append(f"{CLASS_IDS[obj.class_name]} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_yolo_dataset(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    seed: int,
    size: tuple[int, int] = (320, 192),
    planted_fraction: float = 0.0,
    objects_per_image: tuple[int, int] = (1, 6),
) -> Path:
    """Write an ultralytics detection dataset of synthetic scenes; returns the data.yaml path.

    Layout: ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt`` and ``data.yaml`` with
    the class names of :data:`CLASS_NAMES`. The scenes come from random streams of their own,
    so they never repeat a demo image. By default nothing is planted: planted kinds must stay
    rare for the detector and the embeddings.
    """
    out = Path(out_dir).resolve()
    for split, n, stream in (("train", n_train, STREAM_TRAIN), ("val", n_val, STREAM_VAL)):
        plan = _planted_plan(np.random.default_rng([seed, stream, 2**31 - 1]), n, planted_fraction)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for idx in range(n):
            rng = np.random.default_rng([seed, stream, idx])
            image, objects = render_scene(rng, size, plan.get(idx, NOT_PLANTED), objects_per_image)
            _write_jpeg(image, out / "images" / split / f"{split}_{idx:05d}.jpg")
            (out / "labels" / split / f"{split}_{idx:05d}.txt").write_text(
                _yolo_label_lines(objects, int(size[0]), int(size[1]))
            )
    data_yaml = out / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES))
    data_yaml.write_text(
        f"# synthetic street scenes written by rare_objects.demo.scenes (seed {seed})\n"
        f"path: {json.dumps(str(out))}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data_yaml


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size", type=_size, default=DEFAULT_SIZE, help="WIDTHxHEIGHT, default 640x384"
    )
    parser.add_argument("--folders", type=int, default=3, help="number of scene folders")
    parser.add_argument(
        "--planted-fraction",
        type=float,
        default=0.08,
        help="fraction of images holding one planted unusual object",
    )
    parser.add_argument(
        "--yolo",
        action="store_true",
        help="write a YOLO training set instead (n-images train, n-images/5 val)",
    )
    args = parser.parse_args(argv)
    if args.yolo:
        path = write_yolo_dataset(
            args.out, args.n_images, max(1, args.n_images // 5), args.seed, size=args.size
        )
        print(path)
        return 0
    gt = generate_scenes(
        args.out,
        args.n_images,
        args.seed,
        size=args.size,
        folders=args.folders,
        planted_fraction=args.planted_fraction,
    )
    print(
        f"{args.n_images} images, {len(gt)} objects, {int(gt['planted'].sum())} planted -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
