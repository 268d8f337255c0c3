"""Procedural street scenes with the 19 Cityscapes classes — the embedded default data set.

Each image is a pure function of ``(split, index, H, W)``: the scene (a street seen by a pinhole camera: road
with lane markings, sidewalks, terrain, building facades with windows, walls, fences, trees, poles with
traffic signs and lights, cars, trucks, buses, trams, persons, riders, bicycles, motorcycles) is drawn from a
generator seeded by ``(split, index)`` in world coordinates, so objects come in many sizes by perspective (a
far pole or sign is a few pixels, a near car a large part of the image), as in Cityscapes. It is rendered with
PIL (label and colour drawn with the same polygons, so edges agree exactly), then each class gets its own
texture (noise at several scales, windows, lattices, tiles) and the image a global illumination change and
sensor noise, seeded by ``(split, index, H, W)``. Every class has a distinctive but noisy colour and texture,
and details of other colours (windows, wheels, lane markings, shadows) need context, so a short proxy can
learn it well above chance without it being a colour lookup.

Class ids and names are the Cityscapes train ids (``cityscapes.INFO``); native size is ``data.size``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from archsearch.data import DatasetInfo, SegDataset, cache, limit, resolution
from archsearch.data.cityscapes import INFO as CITYSCAPES

if TYPE_CHECKING:
    from archsearch.spec import DataSpec

GENERATOR_VERSION = "1"  # bump when the scenes change: it is part of the cache key
DEFAULT_TRAIN_IMAGES = 64
DEFAULT_VAL_IMAGES = 16
INFO = DatasetInfo(name="synthetic", num_classes=19, class_names=CITYSCAPES.class_names)

# Cityscapes train ids
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

# base colour per class: the Cityscapes palette, with the close pairs (bus/train, fence/pole) moved apart
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 150, 110), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 130, 110), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.float32,
)  # fmt: skip
# texture amplitudes per class (grey levels): per-pixel noise, 4-pixel-scale blobs, 32-pixel-scale shading
FINE = np.array([10, 8, 6, 5, 6, 4, 6, 6, 18, 14, 2, 8, 8, 5, 5, 5, 5, 6, 6], dtype=np.float32)
MEDIUM = np.array([5, 4, 6, 3, 3, 2, 2, 2, 22, 12, 2, 4, 4, 3, 3, 3, 3, 3, 3], dtype=np.float32)
COARSE = np.array([10, 8, 12, 8, 6, 4, 4, 4, 10, 10, 12, 4, 4, 4, 4, 4, 4, 4, 4], dtype=np.float32)

Z_NEAR = 0.5  # metres: faces are clipped to lie in front of this plane
Colour = tuple[int, int, int]


def split_seed(split: str) -> int:
    """Seed of a split (train and val differ)."""
    return int.from_bytes(hashlib.sha256(f"archsearch-synthetic/{split}".encode()).digest()[:8], "little")


# ----------------------------------------------------------------------------------------------- rendering


@dataclass
class Camera:
    """Pinhole camera at height ``hc`` looking along +Z; image coordinates in units of the image height."""

    f: float  # focal length (image heights)
    hc: float  # camera height (m)
    hz: float  # horizon row (fraction of the height)
    u0: float  # vanishing point column (image heights)
    h: int
    w: int

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        z = max(z, Z_NEAR)
        return (self.u0 + self.f * x / z) * self.h, (self.hz + self.f * (self.hc - y) / z) * self.h


class Canvas:
    """A label image and a colour image drawn with the same shapes (``cls=None``: colour only)."""

    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.label = Image.new("L", (cam.w, cam.h), SKY)
        self.colour = Image.new("RGB", (cam.w, cam.h), tuple(int(c) for c in PALETTE[SKY]))
        self._dl = ImageDraw.Draw(self.label)
        self._dc = ImageDraw.Draw(self.colour)

    def _visible(self, pts: Sequence[tuple[float, float]]) -> bool:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return max(xs) >= 0 and min(xs) < self.cam.w and max(ys) >= 0 and min(ys) < self.cam.h

    def polygon(self, pts: Sequence[tuple[float, float]], cls: int | None, colour: Colour) -> None:
        if len(pts) >= 3 and self._visible(pts):
            if cls is not None:
                self._dl.polygon(pts, fill=cls)
            self._dc.polygon(pts, fill=colour)

    def lines(self, pts: Sequence[tuple[float, float]], width: float, cls: int | None, colour: Colour) -> None:
        if self._visible(pts):
            px = max(1, round(width))
            if cls is not None:
                self._dl.line(pts, fill=cls, width=px)
            self._dc.line(pts, fill=colour, width=px)

    def face(self, pts3: Sequence[tuple[float, float, float]], cls: int | None, colour: Colour) -> None:
        """A planar face in world coordinates (clipped at the near plane by clamping Z)."""
        self.polygon([self.cam.project(*p) for p in pts3], cls, colour)


def _jitter(rng: np.random.Generator, cls: int, amount: float = 14.0) -> np.ndarray:
    """The class colour with a random brightness change (sd ``amount``) and a smaller tint (sd ``amount/3``)."""
    return PALETTE[cls] + rng.normal(0.0, amount) + rng.normal(0.0, amount / 3, 3)


def _rgb(c: np.ndarray | Sequence[float], shade: float = 1.0) -> Colour:
    r, g, b = (int(np.clip(v * shade, 0, 255)) for v in c)
    return r, g, b


def _box(
    cv: Canvas, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, cls: int, colour: np.ndarray
) -> None:
    """Visible faces of an axis-aligned box (top if below the camera, the side facing X=0, the rear)."""
    cam = cv.cam
    if y1 < cam.hc:
        cv.face([(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)], cls, _rgb(colour, 1.1))
    if x1 < 0:
        cv.face([(x1, y0, z0), (x1, y1, z0), (x1, y1, z1), (x1, y0, z1)], cls, _rgb(colour, 0.85))
    elif x0 > 0:
        cv.face([(x0, y0, z0), (x0, y1, z0), (x0, y1, z1), (x0, y0, z1)], cls, _rgb(colour, 0.85))
    if z0 >= Z_NEAR:
        cv.face([(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)], cls, _rgb(colour))


def _side_x(x0: float, x1: float) -> float | None:
    """X of the side face of a box that the camera sees (None when it straddles X=0)."""
    return x1 if x1 < 0 else (x0 if x0 > 0 else None)


def _disc_side(cv: Canvas, x: float, yc: float, zc: float, r: float, cls: int | None, colour: Colour) -> None:
    """A disc in the plane X=x (a wheel seen from the side), as a 12-gon."""
    pts = [(x, yc + r * math.sin(a), zc + r * math.cos(a)) for a in np.linspace(0, 2 * math.pi, 12, endpoint=False)]
    cv.face(pts, cls, colour)


class Billboard:
    """Shapes in a vertical plane facing the camera at depth ``z``; local metres (x right, y up) from ``x``."""

    def __init__(self, cv: Canvas, x: float, z: float) -> None:
        self.cv, self.x, self.z = cv, x, z
        self.scale = cv.cam.f * cv.cam.h / z  # pixels per metre

    def p(self, x: float, y: float) -> tuple[float, float]:
        return self.cv.cam.project(self.x + x, y, self.z)

    def poly(self, pts: Sequence[tuple[float, float]], cls: int | None, colour: Colour) -> None:
        self.cv.polygon([self.p(*q) for q in pts], cls, colour)

    def rect(self, x0: float, y0: float, x1: float, y1: float, cls: int | None, colour: Colour) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, colour)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, cls: int | None, colour: Colour) -> None:
        n = 14
        self.poly([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(0, 2 * math.pi, n, False)],
                  cls, colour)  # fmt: skip

    def ring(self, cx: float, cy: float, r: float, width: float, cls: int | None, colour: Colour) -> None:
        pts = [self.p(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 17)]
        self.cv.lines(pts, width * self.scale, cls, colour)

    def line(self, pts: Sequence[tuple[float, float]], width: float, cls: int | None, colour: Colour) -> None:
        self.cv.lines([self.p(*q) for q in pts], width * self.scale, cls, colour)


# ------------------------------------------------------------------------------------------------- objects
# Each object draws itself with a ``rng`` it may use freely: the scene consumes the generator in the same
# order at every resolution, so a scene is the same at every size.


def _person(cv: Canvas, rng: np.random.Generator, x: float, z: float, cls: int = PERSON, seated: float = 0.0) -> None:
    """A person (or rider, ``seated`` metres up on a bike: legs bent) facing the camera."""
    h = rng.uniform(1.55, 1.95)
    body, skin = _jitter(rng, cls, 22), np.array([225, 180, 150]) + rng.normal(0, 15, 3)
    legs = body * rng.uniform(0.45, 0.7)
    bb, stride = Billboard(cv, x, z), rng.uniform(-0.15, 0.15)
    if seated:
        bb.poly([(-0.18, seated), (0.18, seated), (0.22, seated - 0.55), (0.1, seated - 0.55)], cls, _rgb(legs))
        base = seated - 0.47 * h + 0.05
    else:
        base = 0.0
        bb.poly([(-0.17, 0.47 * h), (-0.02, 0.47 * h), (-0.05 + stride, 0), (-0.17 + stride, 0)], cls, _rgb(legs))
        bb.poly([(0.02, 0.47 * h), (0.17, 0.47 * h), (0.17 - stride, 0), (0.05 - stride, 0)], cls, _rgb(legs))
    bb.poly([(-0.22, base + 0.46 * h), (0.22, base + 0.46 * h), (0.2, base + 0.82 * h), (-0.2, base + 0.82 * h)],
            cls, _rgb(body))  # fmt: skip
    for side in (-1, 1):
        swing = rng.uniform(-0.12, 0.12)
        bb.line([(side * 0.22, base + 0.8 * h), (side * 0.27 + swing, base + 0.5 * h)], 0.09, cls, _rgb(body, 0.9))
    bb.ellipse(0.0, base + 0.9 * h, 0.1, 0.12, cls, _rgb(skin))
    if cls == RIDER and rng.random() < 0.7:  # helmet
        bb.ellipse(0.0, base + 0.94 * h, 0.12, 0.08, cls, _rgb(_jitter(rng, cls, 40)))


def _bicycle(cv: Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A bicycle seen from the side: two rings, a frame, a saddle and handlebars."""
    c = _rgb(_jitter(rng, BICYCLE, 20))
    bb, r = Billboard(cv, x, z), 0.34
    bb.ring(0.0, r, r, 0.05, BICYCLE, c)
    bb.ring(1.05, r, r, 0.05, BICYCLE, c)
    frame = [(0.0, r), (0.45, r), (0.35, 0.85), (0.0, r)]
    bb.line(frame, 0.045, BICYCLE, c)
    bb.line([(0.45, r), (0.95, 0.85), (0.35, 0.85)], 0.045, BICYCLE, c)
    bb.line([(0.95, 0.85), (1.05, r)], 0.045, BICYCLE, c)
    bb.rect(0.25, 0.88, 0.45, 0.93, BICYCLE, c)
    bb.line([(0.9, 0.95), (1.05, 0.98)], 0.04, BICYCLE, c)


def _motorcycle(cv: Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A motorcycle seen from the side: solid wheels, body, seat, handlebars."""
    body = _jitter(rng, MOTORCYCLE, 20)
    bb = Billboard(cv, x, z)
    for cx in (0.3, 1.7):
        bb.ellipse(cx, 0.3, 0.3, 0.3, MOTORCYCLE, _rgb(body, 0.35))
        bb.ellipse(cx, 0.3, 0.13, 0.13, MOTORCYCLE, _rgb(body, 0.8))
    bb.poly([(0.35, 0.45), (1.6, 0.45), (1.5, 0.85), (0.5, 0.85)], MOTORCYCLE, _rgb(body))
    bb.rect(0.3, 0.85, 1.1, 0.95, MOTORCYCLE, _rgb(body, 0.5))
    bb.line([(1.5, 0.85), (1.6, 1.15), (1.45, 1.2)], 0.05, MOTORCYCLE, _rgb(body, 0.6))


def _car(cv: Canvas, rng: np.random.Generator, x0: float, z0: float) -> None:
    """A car driving away or parked (box body, cabin with dark windows, wheels, rear lights, shadow)."""
    width, length = rng.uniform(1.65, 1.95), rng.uniform(3.8, 4.8)
    x1, z1 = x0 + width, z0 + length
    body = _jitter(rng, CAR, 18)
    glass = (30 + rng.normal(0, 6, 3)).clip(0, 255)
    cv.face([(x0 - 0.2, 0, z0 - 0.3), (x1 + 0.2, 0, z0 - 0.3), (x1 + 0.3, 0, z1 + 0.3), (x0 - 0.3, 0, z1 + 0.3)],
            None, (35, 32, 38))  # shadow: colour only  # fmt: skip
    side = _side_x(x0, x1)
    if side is not None:
        for zc in (z0 + 0.8, z1 - 0.8):
            _disc_side(cv, side, 0.32, zc, 0.32, CAR, (22, 22, 24))
    for wx in (x0 + 0.1, x1 - 0.35):  # rear wheels under the bumper
        cv.face([(wx, 0, z0 + 0.6), (wx + 0.25, 0, z0 + 0.6), (wx + 0.25, 0.35, z0 + 0.6), (wx, 0.35, z0 + 0.6)],
                CAR, (22, 22, 24))  # fmt: skip
    _box(cv, x0, x1, 0.25, 1.0, z0, z1, CAR, body)
    cz0, cz1 = z0 + 0.25 * length, z0 + 0.8 * length
    _box(cv, x0 + 0.1, x1 - 0.1, 1.0, rng.uniform(1.4, 1.55), cz0, cz1, CAR, body * 0.95)
    if side is not None:  # side windows
        cv.face([(side, 1.05, cz0 + 0.15), (side, 1.35, cz0 + 0.15), (side, 1.35, cz1 - 0.15),
                 (side, 1.05, cz1 - 0.15)], CAR, _rgb(glass))  # fmt: skip
    if z0 >= Z_NEAR:
        cv.face([(x0 + 0.25, 1.05, cz0), (x1 - 0.25, 1.05, cz0), (x1 - 0.25, 1.35, cz0), (x0 + 0.25, 1.35, cz0)],
                CAR, _rgb(glass))  # fmt: skip
        for lx in (x0 + 0.08, x1 - 0.33):  # rear lights
            cv.face([(lx, 0.7, z0), (lx + 0.25, 0.7, z0), (lx + 0.25, 0.85, z0), (lx, 0.85, z0)], CAR, (190, 30, 30))


def _truck(cv: Canvas, rng: np.random.Generator, x0: float, z0: float) -> None:
    """A truck driving away: cargo box at the back, cab in front, wheels, shadow."""
    width = rng.uniform(2.2, 2.5)
    x1 = x0 + width
    cargo, cab = _jitter(rng, TRUCK, 18), _jitter(rng, TRUCK, 25)
    cv.face([(x0 - 0.2, 0, z0 - 0.3), (x1 + 0.2, 0, z0 - 0.3), (x1 + 0.3, 0, z0 + 9), (x0 - 0.3, 0, z0 + 9)],
            None, (35, 32, 38))  # fmt: skip
    _box(cv, x0 + 0.05, x1 - 0.05, 0.4, 2.7, z0 + 6.3, z0 + 8.5, TRUCK, cab)
    side = _side_x(x0, x1)
    if side is not None:
        for zc in (z0 + 1.0, z0 + 2.2, z0 + 7.3):
            _disc_side(cv, side, 0.45, zc, 0.45, TRUCK, (22, 22, 24))
    _box(cv, x0, x1, 0.7, rng.uniform(3.2, 3.8), z0, z0 + 6.2, TRUCK, cargo)


def _bus(cv: Canvas, rng: np.random.Generator, x0: float, z0: float) -> None:
    """A bus driving away: a long box with a band of windows on the side and a rear window."""
    width, length, top = 2.5, rng.uniform(10, 13), rng.uniform(2.9, 3.3)
    x1, z1 = x0 + width, z0 + length
    body = _jitter(rng, BUS, 18)
    cv.face([(x0 - 0.2, 0, z0 - 0.3), (x1 + 0.2, 0, z0 - 0.3), (x1 + 0.3, 0, z1), (x0 - 0.3, 0, z1)],
            None, (35, 32, 38))  # fmt: skip
    _box(cv, x0, x1, 0.3, top, z0, z1, BUS, body)
    side, glass = _side_x(x0, x1), (28, 36, 44)
    if side is not None:
        cv.face([(side, 1.4, z0 + 0.5), (side, 2.5, z0 + 0.5), (side, 2.5, z1 - 1.5), (side, 1.4, z1 - 1.5)],
                BUS, glass)  # fmt: skip
        for zc in (z0 + 2.0, z1 - 2.5):
            _disc_side(cv, side, 0.5, zc, 0.5, BUS, (22, 22, 24))
    if z0 >= Z_NEAR:
        cv.face([(x0 + 0.3, 1.8, z0), (x1 - 0.3, 1.8, z0), (x1 - 0.3, 2.7, z0), (x0 + 0.3, 2.7, z0)], BUS, glass)


def _tram(cv: Canvas, rng: np.random.Generator, x0: float, z0: float) -> None:
    """A tram (the ``train`` class) on the road: a very long box with windows and a pantograph."""
    width, length = 2.4, rng.uniform(20, 30)
    x1, z1 = x0 + width, z0 + length
    body = _jitter(rng, TRAIN, 18)
    cv.face([(x0 + 0.5, 0, z0), (x0 + 0.6, 0, z0), (x0 + 0.6, 0, z1 + 40), (x0 + 0.5, 0, z1 + 40)], None, (90, 90, 95))
    cv.face([(x1 - 0.6, 0, z0), (x1 - 0.5, 0, z0), (x1 - 0.5, 0, z1 + 40), (x1 - 0.6, 0, z1 + 40)], None, (90, 90, 95))
    _box(cv, x0, x1, 0.4, 3.5, z0, z1, TRAIN, body)
    side, glass = _side_x(x0, x1), (28, 36, 44)
    if side is not None:
        for k in range(int(length // 2.5)):
            za = z0 + 0.6 + 2.5 * k
            cv.face([(side, 1.5, za), (side, 2.7, za), (side, 2.7, za + 1.7), (side, 1.5, za + 1.7)], TRAIN, glass)
    if z0 >= Z_NEAR:
        cv.face([(x0 + 0.3, 1.6, z0), (x1 - 0.3, 1.6, z0), (x1 - 0.3, 2.9, z0), (x0 + 0.3, 2.9, z0)], TRAIN, glass)
        bb = Billboard(cv, x0, z0 + 3)
        bb.line([(0.6, 3.5), (1.2, 4.2), (1.8, 3.5)], 0.06, TRAIN, _rgb(body, 0.5))


def _pole(cv: Canvas, rng: np.random.Generator, x: float, z: float, kind: str) -> None:
    """A pole, optionally carrying traffic signs (``sign``), a traffic light (``light``) or a lamp arm."""
    h, wd = rng.uniform(3.0, 8.0) if kind != "sign" else rng.uniform(2.4, 3.5), rng.uniform(0.1, 0.2)
    grey = _jitter(rng, POLE, 12)
    bb = Billboard(cv, x, z)
    bb.rect(-wd / 2, 0, wd / 2, h, POLE, _rgb(grey))
    if kind == "sign":
        for k in range(1 + int(rng.random() < 0.35)):
            s, y = rng.uniform(0.5, 0.9), h - 0.45 - k * 0.95
            c, shape = _rgb(_jitter(rng, SIGN, 20)), rng.integers(3)
            if shape == 0:
                bb.ellipse(0, y, s / 2, s / 2, SIGN, c)
                bb.ellipse(0, y, s / 3, s / 3, SIGN, _rgb(PALETTE[SIGN], 0.75))  # inner disc, darker
            elif shape == 1:
                bb.poly([(-s / 2, y + s / 3), (s / 2, y + s / 3), (0, y - s / 2)], SIGN, c)
            else:
                bb.rect(-s / 2, y - s / 3, s / 2, y + s / 3, SIGN, c)
    elif kind == "light":
        hw, side = 0.18, rng.choice([-1.0, 1.0])
        arm = rng.uniform(0.0, 2.5)
        if arm > 0.3:
            bb.line([(0, h), (side * arm, h)], 0.12, POLE, _rgb(grey))
        cx, top = side * arm, h - 0.05 if arm > 0.3 else h + 1.0
        bb.rect(cx - hw, top - 0.95, cx + hw, top, LIGHT, _rgb(_jitter(rng, LIGHT, 18)))
        lit = rng.integers(3)
        for k in range(3):
            colour = [(255, 40, 30), (255, 200, 40), (60, 255, 120)][k] if k == lit else (60, 55, 40)
            bb.ellipse(cx, top - 0.18 - 0.3 * k, 0.09, 0.09, LIGHT, colour)
    elif kind == "lamp":
        side = rng.choice([-1.0, 1.0])
        bb.line([(0, h), (side * 1.2, h + 0.3)], 0.1, POLE, _rgb(grey))
        bb.rect(side * 1.2 - 0.25, h + 0.15, side * 1.2 + 0.25, h + 0.35, POLE, _rgb(grey, 0.7))


def _tree(cv: Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A tree: trunk and a crown of overlapping ellipses (all vegetation, as in Cityscapes)."""
    h, green = rng.uniform(4, 10), _jitter(rng, VEGETATION, 16)
    bb = Billboard(cv, x, z)
    bb.rect(-0.15, 0, 0.15, h * 0.5, VEGETATION, (90, 70, 50))
    r = h * rng.uniform(0.2, 0.35)
    for _ in range(rng.integers(3, 7)):
        dx, dy = rng.normal(0, r * 0.5), h * 0.6 + rng.normal(0, r * 0.4)
        bb.ellipse(dx, dy, r * rng.uniform(0.6, 1.0), r * rng.uniform(0.5, 0.9), VEGETATION,
                   _rgb(green, rng.uniform(0.8, 1.15)))  # fmt: skip


def _facade(cv: Canvas, rng: np.random.Generator, xf: float, z0: float, z1: float, outward: float) -> None:
    """A building along the street: side facade in the plane X=xf, its front face at z0, windows on both."""
    top, colour = rng.uniform(6, 28), _jitter(rng, BUILDING, 22)
    depth = outward * 15.0  # the building extends away from the street
    if z0 >= Z_NEAR:
        cv.face([(xf, 0, z0), (xf + depth, 0, z0), (xf + depth, top, z0), (xf, top, z0)], BUILDING, _rgb(colour, 0.9))
    cv.face([(xf, 0, z0), (xf, top, z0), (xf, top, z1), (xf, 0, z1)], BUILDING, _rgb(colour))
    glass = np.array([45, 55, 75]) + rng.normal(0, 10, 3)
    wz, wy = rng.uniform(2.5, 4.0), rng.uniform(2.8, 3.5)
    win_w, win_h = wz * rng.uniform(0.35, 0.6), wy * rng.uniform(0.35, 0.55)
    lit = rng.random()
    cam = cv.cam
    for j in range(int((top - 1.5) // wy)):
        y = 1.5 + j * wy
        for k in range(int((z1 - z0) // wz)):
            za = z0 + 0.5 * (wz - win_w) + k * wz
            if za < 1.0 or (cam.f * cam.h * win_h / za) < 1.5:  # behind the camera or below a pixel and a half
                continue
            shade = 1.0 + 0.6 * (((j * 7 + k * 13) % 11) / 11.0 < lit * 0.3)  # a few lit windows
            cv.face([(xf, y, za), (xf, y + win_h, za), (xf, y + win_h, za + win_w), (xf, y, za + win_w)],
                    None, _rgb(glass, shade))  # fmt: skip


def _far_building(cv: Canvas, rng: np.random.Generator, x0: float, x1: float, z: float) -> None:
    """A building across the far end of the street (a face at depth z) with windows."""
    top, colour = rng.uniform(6, 25), _jitter(rng, BUILDING, 22)
    bb = Billboard(cv, 0.0, z)
    bb.rect(x0, 0, x1, top, BUILDING, _rgb(colour))
    glass = _rgb(np.array([45, 55, 75]) + rng.normal(0, 10, 3))
    if bb.scale * 1.2 >= 1.5:
        for y in np.arange(1.5, top - 1.5, 3.2):
            for x in np.arange(x0 + 1.0, x1 - 1.5, 3.0):
                bb.rect(x, y, x + 1.3, y + 1.5, None, glass)


# --------------------------------------------------------------------------------------------------- scene


def _ground(cv: Canvas, x0: float, x1: float, z0: float, z1: float, cls: int | None, colour: Colour) -> None:
    cv.face([(x0, 0, z0), (x1, 0, z0), (x1, 0, z1), (x0, 0, z1)], cls, colour)


def _log_depth(rng: np.random.Generator, near: float, far: float) -> float:
    """Depth drawn log-uniformly: objects of every apparent size."""
    return float(near * math.exp(rng.uniform(0.0, math.log(far / near))))


def _scene(cv: Canvas, rng: np.random.Generator) -> None:
    cam = cv.cam
    z_far = rng.uniform(70, 160)
    lanes_left, lanes_right, lane = int(rng.integers(1, 3)), int(rng.integers(1, 3)), rng.uniform(2.8, 3.5)
    offset = rng.uniform(-0.6, 0.6)  # the camera is near the middle of its lane
    road_l, road_r = offset - lane * (lanes_left + 0.5), offset + lane * (lanes_right - 0.5)
    sw_l, sw_r = rng.uniform(2.0, 4.5), rng.uniform(2.0, 4.5)
    strip_l = rng.uniform(1.5, 4.0) if rng.random() < 0.6 else 0.0  # terrain between sidewalk and buildings
    strip_r = rng.uniform(1.5, 4.0) if rng.random() < 0.6 else 0.0
    xf_l, xf_r = road_l - sw_l - strip_l, road_r + sw_r + strip_r  # facade planes

    # ground: terrain everywhere below the horizon, then road, sidewalks, markings
    _ground(cv, -400, 400, Z_NEAR, 2000, TERRAIN, _rgb(_jitter(rng, TERRAIN)))
    road_c, walk_c = _jitter(rng, ROAD, 10), _jitter(rng, SIDEWALK, 14)
    _ground(cv, road_l, road_r, Z_NEAR, z_far, ROAD, _rgb(road_c))
    _ground(cv, road_l - sw_l, road_l, Z_NEAR, z_far, SIDEWALK, _rgb(walk_c))
    _ground(cv, road_r, road_r + sw_r, Z_NEAR, z_far, SIDEWALK, _rgb(walk_c, 0.95))
    for x in (road_l, road_r):  # curbs
        _ground(cv, x - 0.12, x + 0.12, Z_NEAR, z_far, None, _rgb(walk_c, 1.15))
    paint = _rgb(np.full(3, 225.0) + rng.normal(0, 8, 3))
    dash, gap = rng.uniform(2.5, 4.0), rng.uniform(5.0, 9.0)
    for k in range(1, lanes_left + lanes_right):  # dashed lines between lanes
        x, z = road_l + k * lane, Z_NEAR + rng.uniform(0, gap)
        while z < z_far:
            _ground(cv, x - 0.08, x + 0.08, z, z + dash, None, paint)
            z += dash + gap
    for x in (road_l + 0.3, road_r - 0.3):  # edge lines
        _ground(cv, x - 0.07, x + 0.07, Z_NEAR, z_far, None, paint)
    if rng.random() < 0.35:  # zebra crossing
        zc = rng.uniform(8, 30)
        for x in np.arange(road_l + 0.5, road_r - 0.5, 1.0):
            _ground(cv, x, x + 0.5, zc, zc + 4.0, None, paint)

    # far end of the street
    x = -150.0
    while x < 150.0:
        width = rng.uniform(8, 30)
        if rng.random() < 0.8:
            _far_building(cv, rng, x, x + width, z_far + 5)
        else:
            _tree(cv, rng, x + width / 2, z_far + 3)
        x += width

    # buildings along both sides, far to near (gaps show terrain, trees and the sky)
    for xf, outward in ((xf_l, -1.0), (xf_r, 1.0)):
        segments, z = [], z_far
        while z > 0.0:
            length = rng.uniform(8, 30)
            segments.append((max(z - length, -5.0), z, rng.random() < 0.15))
            z -= length
        for z0, z1, gap in segments:
            if gap:
                _tree(cv, rng, xf + outward * 3.0, max(z0 + (z1 - z0) / 2, 2.0))
            else:
                _facade(cv, rng, xf, z0, z1, outward)

    # things along the facades, then the street, all sorted far to near
    things: list[tuple[float, Callable[[], None]]] = []

    def add(z: float, fn: Callable[[], None]) -> None:
        things.append((z, fn))

    z_min = 1.02 * cam.f * cam.hc / (1.0 - cam.hz)  # nearest depth whose ground point is in view
    z_max = min(z_far, 80.0)
    for xf, outer, inward in ((xf_l, road_l - sw_l, 1.0), (xf_r, road_r + sw_r, -1.0)):
        for _ in range(int(rng.integers(0, 3))):  # walls
            z0, length, top = rng.uniform(3, 60), rng.uniform(4, 20), rng.uniform(0.8, 2.5)
            xa = xf + inward * 0.1
            c = _jitter(rng, WALL, 14)
            xb = xa + inward * 0.3
            add(z0 + length, partial(_box, cv, min(xa, xb), max(xa, xb), 0, top, z0, z0 + length, WALL, c))
        for _ in range(int(rng.integers(0, 3))):  # fences at the outer edge of the sidewalk
            z0, length, top = rng.uniform(3, 60), rng.uniform(4, 20), rng.uniform(1.0, 2.0)
            fence = [(outer, 0.0, z0), (outer, top, z0), (outer, top, z0 + length), (outer, 0.0, z0 + length)]
            add(z0 + length, partial(cv.face, fence, FENCE, _rgb(_jitter(rng, FENCE, 14))))
        if abs(outer - xf) > 1.0:  # trees on the terrain strip
            for _ in range(int(rng.integers(0, 4))):
                z = _log_depth(rng, z_min, z_max)
                add(z, partial(_tree, cv, rng, (outer + xf) / 2, z))
    for side_x in (road_l - 0.4, road_r + 0.4):  # poles, signs, lights, trees on the sidewalks
        for kind in ["plain", "lamp", "sign", "sign", "light", "tree"]:
            for _ in range(int(rng.integers(0, 3))):
                z = _log_depth(rng, z_min, z_max)
                if kind == "tree":
                    add(z, partial(_tree, cv, rng, side_x, z))
                else:
                    add(z, partial(_pole, cv, rng, side_x, z, kind))
    for _ in range(int(rng.integers(1, 7))):  # pedestrians: on sidewalks, some crossing
        z = _log_depth(rng, z_min, z_max)
        x = rng.choice([rng.uniform(road_l - sw_l + 0.3, road_l - 0.3), rng.uniform(road_r + 0.3, road_r + sw_r - 0.3),
                        rng.uniform(road_l, road_r)], p=[0.4, 0.4, 0.2])  # fmt: skip
        add(z, partial(_person, cv, rng, x, z))
    for _ in range(int(rng.integers(0, 3))):  # riders on bicycles or motorcycles, on the road edge
        z, x, motor = _log_depth(rng, z_min, z_max), rng.uniform(road_l, road_r) - 1.0, rng.random() < 0.35

        def ride(x: float = x, z: float = z, motor: bool = motor) -> None:
            (_motorcycle if motor else _bicycle)(cv, rng, x, z + 0.05)
            _person(cv, rng, x + (0.9 if motor else 0.55), z, RIDER, seated=0.95 if motor else 0.92)

        add(z, ride)
    for _ in range(int(rng.integers(0, 3))):  # parked bicycles and motorcycles on the sidewalks
        z, x = _log_depth(rng, z_min, z_max), rng.choice([road_l - sw_l + 0.2, road_r + 0.2])
        motor = rng.random() < 0.4
        add(z, partial(_motorcycle if motor else _bicycle, cv, rng, x, z))
    vehicles = [_car] * int(rng.integers(1, 8))
    vehicles += [_truck] * int(rng.random() < 0.45) + [_bus] * int(rng.random() < 0.4)
    for make in vehicles:
        z = _log_depth(rng, max(z_min, 3.0), z_max)
        if rng.random() < 0.4:  # parked along an edge of the road
            x = road_l + 0.2 if rng.random() < 0.5 else road_r - 2.7
        else:
            x = road_l + lane * (rng.integers(0, lanes_left + lanes_right) + 0.5) - 1.0
        add(z, partial(make, cv, rng, x, z))
    if rng.random() < 0.35:
        z = _log_depth(rng, max(z_min, 6.0), z_max)
        add(z, partial(_tram, cv, rng, road_l + lane * rng.uniform(0.3, 1.2), z))
    for _, fn in sorted(things, key=lambda t: -t[0]):
        fn()


def _texture(label: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class textures, illumination and sensor noise on top of the flat colours."""
    h, w = label.shape

    def field(step: int) -> np.ndarray:
        small = rng.standard_normal((max(2, -(-h // step) + 1), max(2, -(-w // step) + 1))).astype(np.float32)
        return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BILINEAR))

    img = colour.astype(np.float32)
    lum = FINE[label] * rng.standard_normal((h, w), dtype=np.float32)
    lum += MEDIUM[label] * field(4) * 1.6 + COARSE[label] * field(32) * 1.4
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(3, h // 24)
    lattice = ((xx + yy) % period < max(1, period // 4)) | ((xx - yy) % period < max(1, period // 4))
    lum -= 45.0 * ((label == FENCE) & lattice)
    tile = max(3, h // 20)
    lum -= 18.0 * ((label == SIDEWALK) & ((xx % (2 * tile) == 0) | (yy % tile == 0)))
    lum += 45.0 * (label == SKY) * (yy / h)  # brighter towards the horizon
    img += lum[..., None]
    img += 3.0 * rng.standard_normal((h, w, 3), dtype=np.float32)  # chroma noise
    gain, bias, cast = rng.uniform(0.8, 1.2), rng.uniform(-12, 12), rng.normal(0, 6, 3).astype(np.float32)
    return np.clip(img * gain + bias + cast, 0, 255).astype(np.uint8)


def render(split: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` at ``size = (H, W)``: uint8 ``(H, W, 3)`` and train ids ``(H, W)``."""
    h, w = size
    seed = split_seed(split)
    rng = np.random.default_rng([seed, index])
    cam = Camera(f=rng.uniform(1.6, 2.2), hc=rng.uniform(1.2, 1.6), hz=rng.uniform(0.36, 0.48),
                 u0=rng.uniform(0.4, 0.6) * w / h, h=h, w=w)  # fmt: skip
    cv = Canvas(cam)
    _scene(cv, rng)
    label = np.asarray(cv.label, dtype=np.uint8)
    image = _texture(label, np.asarray(cv.colour), np.random.default_rng([seed, index, h, w]))
    return image, label.copy()


def load(spec: DataSpec, split: str, scale: float) -> SegDataset:
    """``train_images`` (default 64) or ``val_images`` (default 16) scenes at ``scale`` × ``spec.size``, cached."""
    n = limit(spec, split)
    if n is None:
        n = DEFAULT_TRAIN_IMAGES if split == spec.train_split else DEFAULT_VAL_IMAGES
    size = resolution((int(spec.size[0]), int(spec.size[1])), scale)
    key = ["synthetic", GENERATOR_VERSION, split]
    images, labels = cache.cached(spec.cache_dir, INFO.name, split, size, n, key, lambda i: render(split, i, size))
    return SegDataset(INFO, images, labels)
