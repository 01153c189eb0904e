"""A deterministic, procedurally drawn radiograph-like data set (the offline default).

Each class is a body part drawn as bright bones (cortex brighter than the medullary cavity)
over a soft-tissue blob, with random pose, scale, exposure, blur, film grain and, in any class,
occasional bright "hardware" (screws, plates) as a distractor. Images are 8-bit grayscale at
`native_size`; the data cache resizes them like any other source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from kdray.data.base import DataConfigBase
from kdray.data.cache import ArraySource

Canvas = np.ndarray  # float32 (S, S) in [0, 1]


def _bone(canvas: Canvas, p0, p1, width: float, rng: np.random.Generator) -> None:
    """A long bone from p0 to p1: bright cortex, slightly darker medulla, rounded ends."""
    s = canvas.shape[0] / 64.0
    pts = [tuple(int(round(v * 16)) for v in p) for p in (p0, p1)]
    outer = max(1, int(round(width * s)))
    inner = max(1, int(round(width * s * 0.45)))
    cortex = rng.uniform(0.75, 0.95)
    cv2.line(canvas, pts[0], pts[1], cortex, outer, cv2.LINE_AA, shift=4)
    for p in pts:
        cv2.circle(canvas, p, int(round(outer * 0.6 * 16)), cortex, -1, cv2.LINE_AA, shift=4)
    cv2.line(canvas, pts[0], pts[1], cortex * 0.8, inner, cv2.LINE_AA, shift=4)


def _blob(canvas: Canvas, centre, axes, angle: float, value: float) -> None:
    c = tuple(int(round(v * 16)) for v in centre)
    a = tuple(max(1, int(round(v * 16))) for v in axes)
    cv2.ellipse(canvas, c, a, angle, 0, 360, value, -1, cv2.LINE_AA, shift=4)


def _along(origin, angle: float, length: float):
    return (origin[0] + length * math.cos(angle), origin[1] + length * math.sin(angle))


def _finger(c: Canvas, o, a, s, rng) -> None:
    p = _along(o, a + math.pi, 22 * s)
    for length in (14, 10, 7):  # proximal, middle, distal phalanx
        bend = rng.normal(0, 0.12)
        q = _along(p, a + bend, length * s)
        _bone(c, p, q, 5.5 * s, rng)
        p = _along(q, a + bend, 2.5 * s)  # joint space


def _forearm(c: Canvas, o, a, s, rng) -> None:
    gap = rng.uniform(5, 8) * s
    for side in (-1, 1):
        off = (side * gap * -math.sin(a), side * gap * math.cos(a))
        base = (o[0] + off[0], o[1] + off[1])
        converge = side * rng.uniform(0.0, 0.06)
        _bone(
            c,
            _along(base, a + math.pi + converge, 30 * s),
            _along(base, a - converge, 30 * s),
            rng.uniform(4.5, 6.5) * s,
            rng,
        )


def _hand(c: Canvas, o, a, s, rng) -> None:
    base = _along(o, a + math.pi, 14 * s)
    for k in range(5):
        ray = a + (k - 2) * rng.uniform(0.18, 0.26)
        start = _along(base, ray, 4 * s)
        mid = _along(start, ray, rng.uniform(11, 14) * s)  # metacarpal
        _bone(c, start, mid, 3.5 * s, rng)
        tip = _along(mid, ray, rng.uniform(9, 13) * s)  # phalanges
        _bone(c, _along(mid, ray, 2 * s), tip, 2.8 * s, rng)


def _humerus(c: Canvas, o, a, s, rng) -> None:
    p0 = _along(o, a + math.pi, 26 * s)
    p1 = _along(o, a, 20 * s)
    _bone(c, p0, p1, rng.uniform(8, 10) * s, rng)
    _blob(c, _along(p1, a, 5 * s), (9 * s, 8 * s), math.degrees(a), rng.uniform(0.75, 0.9))


def _wrist(c: Canvas, o, a, s, rng) -> None:
    for side in (-1, 1):
        base = _along(o, a + math.pi + side * 0.35, 9 * s)
        _bone(c, _along(base, a + math.pi, 24 * s), base, 6 * s, rng)
    for _ in range(int(rng.integers(6, 9))):  # carpal bones
        centre = _along(o, a + rng.uniform(-1.2, 1.2), rng.uniform(1, 8) * s)
        _blob(
            c,
            centre,
            (rng.uniform(2.5, 4) * s, rng.uniform(2, 3) * s),
            rng.uniform(0, 180),
            rng.uniform(0.7, 0.9),
        )


def _elbow(c: Canvas, o, a, s, rng) -> None:
    bend = rng.uniform(0.5, 1.3) * rng.choice([-1, 1])
    _bone(c, _along(o, a + math.pi, 30 * s), _along(o, a + math.pi, 2 * s), 8 * s, rng)
    _blob(c, o, (7 * s, 5 * s), math.degrees(a), 0.8)
    for off in (-3, 3):
        start = _along(o, a + bend + math.pi / 2, off * s)
        _bone(c, _along(start, a + bend, 4 * s), _along(start, a + bend, 28 * s), 4.5 * s, rng)


def _shoulder(c: Canvas, o, a, s, rng) -> None:
    head = _along(o, a, 4 * s)
    _blob(c, head, (10 * s, 10 * s), 0, rng.uniform(0.75, 0.9))
    _bone(c, head, _along(head, a + math.pi, 30 * s), 8 * s, rng)
    # glenoid / scapula: an arc beside the head; clavicle: a thin bone across the top
    centre = tuple(int(round(v * 16)) for v in _along(head, a, 6 * s))
    radius = int(round(14 * s * 16))
    cv2.ellipse(
        c,
        centre,
        (radius, radius),
        math.degrees(a),
        -50,
        50,
        0.7,
        max(1, int(3 * s * c.shape[0] / 64)),
        cv2.LINE_AA,
        shift=4,
    )
    cl = _along(head, a + math.pi / 2, 14 * s)
    _bone(c, _along(cl, a, 22 * s), _along(cl, a + math.pi, 8 * s), 3.5 * s, rng)


BODY_PARTS: dict[str, Callable] = {
    "ELBOW": _elbow,
    "FINGER": _finger,
    "FOREARM": _forearm,
    "HAND": _hand,
    "HUMERUS": _humerus,
    "SHOULDER": _shoulder,
    "WRIST": _wrist,
}


def draw_radiograph(part: str, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (size, size) radiograph-like image of `part`."""
    canvas = np.zeros((size, size), np.float32)
    unit = size / 64.0  # drawing coordinates are in a 64-unit frame, scaled to `size`
    centre = (size / 2 + rng.normal(0, 5) * unit, size / 2 + rng.normal(0, 5) * unit)
    angle = rng.uniform(-math.pi, math.pi)
    # soft tissue: a large dim blob around the limb
    _blob(
        canvas,
        centre,
        (rng.uniform(18, 26) * unit, rng.uniform(10, 16) * unit),
        math.degrees(angle),
        rng.uniform(0.2, 0.35),
    )
    bones = np.zeros_like(canvas)
    BODY_PARTS[part](bones, centre, angle, rng.uniform(0.8, 1.15) * unit, rng)
    canvas = np.maximum(canvas, bones)
    if rng.random() < 0.15:  # orthopaedic hardware, in any class: a shortcut to be ignored
        x, y = rng.uniform(0.2, 0.8, 2) * size
        w, h = rng.uniform(1.5, 4, 2) * unit
        cv2.rectangle(canvas, (int(x - w), int(y - h * 3)), (int(x + w), int(y + h * 3)), 1.0, -1)
    # exposure: gradient, gamma, blur, grain
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    g = rng.normal(0, 0.15, 2)
    canvas = canvas + 0.1 + g[0] * (xx - 0.5) + g[1] * (yy - 0.5)
    canvas = np.clip(canvas, 0, 1) ** rng.uniform(0.7, 1.4)
    sigma = rng.uniform(0.3, 1.2) * unit
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    canvas = canvas + rng.normal(0, noise, canvas.shape).astype(np.float32)
    return (np.clip(canvas, 0, 1) * 255).astype(np.uint8)


def generate_split(
    classes: list[str], count: int, size: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` images with balanced, shuffled labels; the same seed gives the same arrays."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(len(classes)), count)
    rng.shuffle(labels)
    images = np.stack([draw_radiograph(classes[y], size, noise, rng) for y in labels])
    return images, labels.astype(np.int64)


class Config(DataConfigBase):
    """`data: {kind: synthetic}`: procedural radiograph-like images (the offline default)."""

    kind: Literal["synthetic"] = "synthetic"
    seed: int = Field(0, description="seeds the drawing of every image")
    classes: list[str] = Field(
        default_factory=lambda: ["FINGER", "FOREARM", "HAND", "HUMERUS", "WRIST"],
        min_length=2,
        description="the body parts drawn, one class each, of MURA's seven study types",
    )
    train_size: int = Field(800, ge=10, description="images in train")
    valid_size: int = Field(200, ge=10, description="images in valid")
    test_size: int = Field(200, ge=10, description="images in test")
    native_size: int = Field(64, ge=16, le=1024, description="size the images are drawn at")
    noise: float = Field(0.12, ge=0, le=1, description="strength of the film-grain noise")

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, classes: list[str]) -> list[str]:
        unknown = [c for c in classes if c not in BODY_PARTS]
        if unknown:
            raise ValueError(f"unknown body part {unknown}; allowed: {sorted(BODY_PARTS)}")
        if len(set(classes)) != len(classes):
            raise ValueError("classes must be distinct")
        return classes


def open_sources(cfg: Config) -> tuple[list[str], dict]:
    """The synthetic splits of a `data: {kind: synthetic}` job section."""
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    sources = {}
    for index, (split, count) in enumerate(sizes.items()):
        images, labels = generate_split(
            cfg.classes, count, cfg.native_size, cfg.noise, seed=cfg.seed * 1000 + index
        )
        sources[split] = ArraySource(images, labels)
    return list(cfg.classes), sources
