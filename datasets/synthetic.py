"""Synthetic segmentation data in the PASCAL VOC 2012 and MS COCO 2014 on-disk layouts.

This is the project's demo data and its test data.  Real VOC / COCO cannot be shipped or
downloaded in every environment, so this module draws a small dataset that has the same
folders, file names, file formats and label conventions as the real ones.

What it draws (the ``learnable`` style, a model of the real task):

* Five foreground classes (``SYNTHETIC_CLASSES``), each with a characteristic look
  (``CLASS_LOOKS``) that varies within the class as real categories do: a colour family (a hue
  range with saturation and value ranges, drawn per object), a surface (smooth shading, a
  specular highlight, fur streaks, spots, clothing bands) and a shape family with random part
  proportions (aeroplane: fuselage, swept wings and fin; car: body, cabin and dark wheels; cat:
  body, head with ears and tail; dog: body, legs, head and snout; person: head, torso, legs),
  random size, aspect, rotation, mirror and position.
* Neutral, cluttered backgrounds: desaturated smooth fields, an illumination gradient, noise, gray
  lines, blobs and patches, and background-labelled distractors that share exactly one cue with
  some class (a gray patch with a class surface, a small patch in a class colour, a gray class
  silhouette).
* One to three objects per image, 45%-80% of the short image side, so that a training crop
  usually holds one (as in VOC, where objects cover a good part of the image).

Masks hold 0 for background, the class index inside objects and ``IGNORE_INDEX`` (255) in a
band of about 3 px along every object's visible boundary, like the real VOC annotations; later objects may partly hide earlier ones; landscape, portrait and square images
between 96 and 208 px a side (sized for the demo's 128-pixel crops as VOC's images are for 448),
about 5% grayscale images (single-channel JPEGs) and about 2% images without any object.
``make_sample`` takes the background and the object painter as arguments, so another style can
reuse the masks, the camera effects and the writers (the tests draw a harder one).

VOC layout (``OUT/VOC2012``)::

    JPEGImages/<id>.jpg                 every id (train_aug, val, test)
    SegmentationClassAug/<id>.png       'L' index masks, train_aug and val ids
    SegmentationClass/<id>.png          'P' masks with the VOC palette, train and val ids
    Annotations/<id>.xml                VOC XML (objects, a few <part>s), train_aug and val ids
    ImageSets/Segmentation/{train,val,test}.txt

``train`` is about a quarter of the training ids (``train_aug``).  The derived lists
(train_aug.txt, class-label arrays) are deliberately not written: they are derived from the
data elsewhere.

COCO layout (``OUT/coco``)::

    JPEGImages/{train2014,val2014}/COCO_{split}2014_%012d.jpg
    SegmentationClass/{train2014,val2014}/COCO_{split}2014_%012d.png   'L' masks, COCO indices

Everything is deterministic for a given seed: every image has its own generator seeded by
``(seed, layout, image number)``.

Command line::

    python -m datasets.synthetic --out DIR [--num_train N --num_val N --num_test N --seed S]
                                 [--image_size H W] [--no-coco] [--overwrite]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from xml.etree import ElementTree as ET

import cv2
import numpy as np
from PIL import Image

from datasets.classes import COCO_CLASSES, VOC_CLASSES, voc_colormap
from utils.labels import IGNORE_INDEX
from utils.help_format import DefaultsHelpFormatter

# (VOC name, COCO name) of the five foreground classes; the position in this tuple is the
# "synthetic class id" used by ``make_sample``.
SYNTHETIC_CLASSES: Tuple[Tuple[str, str], ...] = (
    ("aeroplane", "airplane"),
    ("car", "car"),
    ("cat", "cat"),
    ("dog", "dog"),
    ("person", "person"),
)
# (name, mask index) of each synthetic class in either layout; pass one as ``classes_index``.
VOC_INDEX: Tuple[Tuple[str, int], ...] = tuple((v, VOC_CLASSES.index(v)) for v, _ in SYNTHETIC_CLASSES)
COCO_INDEX: Tuple[Tuple[str, int], ...] = tuple((c, COCO_CLASSES.index(c)) for _, c in SYNTHETIC_CLASSES)

DEFAULT_NUM_TRAIN = 320
DEFAULT_NUM_VAL = 80
DEFAULT_NUM_TEST = 16
DEFAULT_COCO_TRAIN = 120
DEFAULT_COCO_VAL = 40

GRAY_FRACTION = 0.05
EMPTY_FRACTION = 0.02
JPEG_QUALITY = 90
MIN_SIDE, MAX_SIDE = 96, 208
MAX_OCCLUSION = 0.3  # at most this fraction of a new object may cover earlier ones (best effort)

_VOC_TAG, _COCO_TAG, _VOC_SPLIT_TAG, _COCO_SPLIT_TAG = 0, 1, 2, 3

BBox = Tuple[int, int, int, int]


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------
def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (N, 2) points (x, y) by ``angle`` radians about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: Tuple[int, int], channels: int) -> np.ndarray:
    """(h, w, channels) float32 smooth random field, N(0, 1) on a coarse grid upsampled cubically."""
    grid = rng.normal(0.0, 1.0, size=(cells[0], cells[1], channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _boundary_band(region: np.ndarray) -> np.ndarray:
    """(h, w) bool band of ~3 px on the boundary of ``region``: 2 px outside, 1 px inside."""
    r = region.astype(np.uint8)
    outer = cv2.dilate(r, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    inner = cv2.erode(r, np.ones((3, 3), np.uint8))
    return (outer > 0) & (inner == 0)


def sample_image_size(rng: np.random.Generator) -> Tuple[int, int]:
    """A random (height, width): ~50% landscape, ~30% portrait, ~20% square, sides in [96, 208].

    The demo trains on 128-pixel crops; these sizes relate to that crop as VOC's ~500x375
    images relate to the paper's 448 crop, so a crop holds most of an image and its labels."""
    kind = rng.choice(3, p=[0.5, 0.3, 0.2])
    if kind == 2:
        side = int(rng.integers(112, 177))
        return side, side
    long_side = int(rng.integers(144, MAX_SIDE + 1))
    short_side = int(np.clip(round(long_side * rng.uniform(0.5, 0.85)), MIN_SIDE, long_side))
    return (short_side, long_side) if kind == 0 else (long_side, short_side)


def _image_size(rng: np.random.Generator, fixed: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    size = sample_image_size(rng)      # drawn either way, so the other draws do not shift
    if fixed is None:
        return size
    h, w = int(fixed[0]), int(fixed[1])
    if min(h, w) < 32:
        raise ValueError(f"image_size must be at least 32 x 32, got {h} x {w}")
    return h, w


# --------------------------------------------------------------------------------------------
# The "learnable" style: classes with a characteristic look on neutral clutter
# --------------------------------------------------------------------------------------------
# Each class has a colour family (hue range in degrees, saturation and value ranges), a
# surface texture and a shape family, like a real category (aeroplanes pale and smooth, cars
# red, shiny and with wheels, cats orange and furry...).  Every object draws its own hue,
# saturation, value, size, aspect, rotation, mirror and part proportions inside those ranges.
CLASS_LOOKS: Tuple[Dict[str, object], ...] = (
    dict(hue=(198, 225), sat=(0.35, 0.6), val=(0.75, 0.95), texture="smooth", shape="plane"),
    dict(hue=(-14, 10), sat=(0.65, 0.95), val=(0.55, 0.90), texture="shiny", shape="car"),
    dict(hue=(18, 34), sat=(0.55, 0.85), val=(0.50, 0.85), texture="fur", shape="cat"),
    dict(hue=(44, 60), sat=(0.45, 0.75), val=(0.55, 0.90), texture="spots", shape="dog"),
    dict(hue=(265, 300), sat=(0.40, 0.75), val=(0.40, 0.80), texture="bands", shape="person"),
)
LEARNABLE_SIZE_RANGE = (0.45, 0.8)   # object extent as a fraction of the short image side


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """(3,) float32 RGB in [0, 255] of a hue in degrees and saturation / value in [0, 1]."""
    hsv = np.array([[[(h % 360.0) / 2.0, s * 255.0, v * 255.0]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).reshape(3).astype(np.float32)


def _ellipse_poly(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect_poly(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _shape_parts(rng: np.random.Generator, shape: str) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Polygons of one object in a unit frame (x right, y down, extent about [-1, 1]).

    Returns (body, dark): ``dark`` parts (a car's wheels) belong to the object but are painted
    dark instead of in the class colour."""
    j = lambda lo, hi: float(rng.uniform(lo, hi))
    if shape == "plane":   # fuselage, swept wings, tail fin
        length, width = 1.0, j(0.12, 0.18)
        span, sweep, chord = j(0.75, 1.0), j(0.15, 0.4), j(0.22, 0.32)
        wx = j(-0.15, 0.1)
        body = [_ellipse_poly(0, 0, length, width),
                np.array([[wx, 0], [wx - sweep, -span], [wx - sweep - chord, -span], [wx - chord, 0],
                          [wx - sweep - chord, span], [wx - sweep, span]]),
                np.array([[-0.7, 0], [-0.95, -0.35], [-1.0, -0.3], [-0.9, 0], [-1.0, 0.3], [-0.95, 0.35]])]
        return body, []
    if shape == "car":     # body, cabin, two wheels
        h, cab = j(0.32, 0.42), j(0.45, 0.65)
        body = [_rect_poly(-1.0, -h / 2, 1.0, h / 2),
                np.array([[-cab * 0.8, -h / 2], [-cab * 0.55, -h / 2 - j(0.28, 0.38)],
                          [cab * 0.55, -h / 2 - j(0.28, 0.38)], [cab, -h / 2]])]
        r = j(0.2, 0.26)
        dark = [_ellipse_poly(-0.6, h / 2, r, r), _ellipse_poly(0.6, h / 2, r, r)]
        return body, dark
    if shape == "cat":     # round body, head with two pointed ears
        hr = j(0.3, 0.38)
        hx, hy = j(0.45, 0.6), -j(0.35, 0.5)
        ear = j(0.25, 0.35)
        body = [_ellipse_poly(-0.15, 0.2, j(0.65, 0.8), j(0.45, 0.6)), _ellipse_poly(hx, hy, hr, hr),
                np.array([[hx - hr * 0.9, hy - hr * 0.2], [hx - hr * 0.6, hy - hr - ear], [hx - hr * 0.05, hy - hr * 0.8]]),
                np.array([[hx + hr * 0.05, hy - hr * 0.8], [hx + hr * 0.6, hy - hr - ear], [hx + hr * 0.9, hy - hr * 0.2]]),
                np.array([[-0.75, 0.25], [-1.0, -0.5], [-0.9, -0.55], [-0.6, 0.15]])]   # tail
        return body, []
    if shape == "dog":     # long body, four legs, head with a snout
        bh = j(0.28, 0.36)
        body = [_ellipse_poly(0, 0, 0.75, bh)]
        leg = j(0.4, 0.55)
        for x in (-0.55, -0.35, 0.35, 0.55):
            body.append(_rect_poly(x - 0.07, 0, x + 0.07, bh + leg))
        hx, hy = j(0.75, 0.85), -j(0.25, 0.4)
        body += [_ellipse_poly(hx, hy, 0.22, 0.2), _ellipse_poly(hx + 0.2, hy + 0.06, 0.16, 0.1)]
        return body, []
    if shape == "person":  # head, torso, two legs
        tw, th = j(0.3, 0.42), j(0.7, 0.9)
        body = [_ellipse_poly(0, -th / 2 - 0.22, 0.2, 0.22), _rect_poly(-tw, -th / 2, tw, th / 2),
                _rect_poly(-tw, th / 2, -0.04, th / 2 + j(0.5, 0.65)),
                _rect_poly(0.04, th / 2, tw, th / 2 + j(0.5, 0.65))]
        return body, []
    raise ValueError(f"unknown shape {shape!r}")


def _place(polys: Sequence[np.ndarray], cx: float, cy: float, scale: float, aspect: float,
           angle: float, mirror: bool) -> List[np.ndarray]:
    out = []
    for p in polys:
        q = p * np.array([(-1.0 if mirror else 1.0) * scale * aspect, scale / aspect])
        out.append(_rotate(q, angle) + np.array([cx, cy]))
    return out


def _polys_mask(h: int, w: int, polys: Sequence[np.ndarray]) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    for p in polys:
        cv2.fillPoly(canvas, [np.round(p).astype(np.int32).reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def _surface(rng: np.random.Generator, texture: str, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Brightness factor (hb, wb) of a class surface at object-frame coordinates ``u``/``v``
    (in units of the object's half-extent ``scale`` px)."""
    if texture == "smooth":     # soft shading across the object
        return 0.9 + 0.15 * np.clip(-v, -1.5, 1.5) + 0.03 * u
    if texture == "shiny":      # a bright specular band over the body
        centre, width = rng.uniform(-0.35, -0.1), rng.uniform(0.06, 0.12)
        return 0.85 + 0.6 * np.exp(-((v - centre) / width) ** 2)
    if texture == "fur":        # fine streaks along one direction with darker tabby stripes
        hb, wb = u.shape
        noise = rng.normal(0, 1, (hb, wb)).astype(np.float32)
        k = max(3, int(scale * 0.12)) | 1
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        angle = rng.uniform(-30, 30)
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), angle, 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        kernel /= max(kernel.sum(), 1e-6)
        streaks = cv2.filter2D(noise, -1, kernel)
        streaks /= streaks.std() + 1e-6
        period = rng.uniform(0.28, 0.4)
        tabby = (np.mod(u / period + 0.3 * np.sin(3 * v), 1.0) < 0.35)
        return 1.0 + 0.16 * streaks - 0.22 * tabby
    if texture == "spots":      # irregular dark patches
        out = np.ones_like(u, dtype=np.float32)
        for _ in range(int(rng.integers(4, 9))):
            su, sv = rng.uniform(-0.8, 0.8), rng.uniform(-0.4, 0.4)
            r = rng.uniform(0.1, 0.2)
            out[((u - su) / 1.3) ** 2 + (v - sv) ** 2 < r * r] = 0.45
        return out
    if texture == "bands":      # horizontal clothing bands
        period = rng.uniform(0.22, 0.34)
        return np.where(np.mod(v / period, 1.0) < 0.5, 1.05, 0.72)
    raise ValueError(f"unknown texture {texture!r}")


def _paint_look(image: np.ndarray, region: np.ndarray, rng: np.random.Generator, look: Dict[str, object],
                cx: float, cy: float, scale: float, angle: float) -> None:
    """Paint ``region`` of float ``image`` in the class's colour family with its surface."""
    x, y, bw, bh = cv2.boundingRect(region.astype(np.uint8))
    if bw == 0 or bh == 0:
        return
    ys, xs = np.mgrid[y:y + bh, x:x + bw].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = ((xs - cx) * c + (ys - cy) * s) / scale
    v = (-(xs - cx) * s + (ys - cy) * c) / scale
    hue = rng.uniform(*look["hue"])
    base = _hsv_to_rgb(hue, rng.uniform(*look["sat"]), rng.uniform(*look["val"]))
    factor = _surface(rng, str(look["texture"]), u, v, scale)[..., None]
    colours = base * factor
    if look["texture"] == "shiny":   # the highlight goes towards white, not just brighter red
        colours = colours + (factor - 1.0).clip(0, None) * 120.0
    sub = region[y:y + bh, x:x + bw]
    image[y:y + bh, x:x + bw][sub] = colours[sub]


def _neutral_colour(rng: np.random.Generator, lo: float = 40.0, hi: float = 215.0) -> np.ndarray:
    """A desaturated (3,) RGB colour: a gray level with a faint random tint."""
    return np.clip(rng.uniform(lo, hi) + rng.uniform(-10, 10, 3), 0, 255).astype(np.float32)


def _neutral_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) cluttered but neutral background with background-labelled distractors.

    Desaturated smooth fields, an illumination gradient and noise, gray lines, blobs and
    patches; and distractors that share exactly one cue with some class: a gray patch with a
    class's surface texture, a small irregular patch in a class's colour family, or a class's
    silhouette in flat gray."""
    gh, gw = (int(v) for v in rng.integers(2, 6, size=2))
    grid = np.stack([_neutral_colour(rng) for _ in range(gh * gw)]).reshape(gh, gw, 3)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, 3)
    img += 14.0 * _smooth_field(rng, h, w, (max(2, h // 20), max(2, w // 20)), 1)
    direction = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xs * np.cos(direction) + ys * np.sin(direction)) / max(h, w)
    img += ramp[..., None] * rng.uniform(-50, 50)
    short = min(h, w)
    for _ in range(int(rng.integers(0, 4))):        # gray patches
        size = rng.uniform(0.1, 0.35) * short
        pts = rng.uniform([0, 0], [w, h]) + rng.uniform(-size / 2, size / 2, size=(5, 2))
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(img, hull, tuple(float(c) for c in _neutral_colour(rng)))
    for _ in range(int(rng.integers(1, 5))):        # gray blobs
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, max(3, int(0.08 * short)))), int(rng.integers(2, max(3, int(0.08 * short)))))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                    tuple(float(c) for c in _neutral_colour(rng)), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 6))):        # gray lines
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, tuple(float(c) for c in _neutral_colour(rng)), int(rng.integers(1, 4)), cv2.LINE_AA)
    # One-cue distractors.
    for _ in range(int(rng.random() < 0.6) + int(rng.random() < 0.25)):
        kind = int(rng.integers(0, 3))
        look = CLASS_LOOKS[int(rng.integers(0, len(CLASS_LOOKS)))]
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * np.pi)
        if kind == 0:     # texture only: a gray quadrilateral with a class surface
            size = rng.uniform(0.15, 0.3) * short
            pts = np.array([cx, cy]) + rng.uniform(-size / 2, size / 2, size=(4, 2))
            region = _polys_mask(h, w, [cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)])
            gray = dict(look, hue=(0, 360), sat=(0.0, 0.06), val=(0.3, 0.8))
            _paint_look(img, region, rng, gray, cx, cy, size / 2, angle)
        elif kind == 1:   # colour only: a small flat irregular patch in a class's colour family
            size = rng.uniform(0.06, 0.15) * short
            pts = np.array([cx, cy]) + rng.uniform(-size / 2, size / 2, size=(6, 2))
            region = _polys_mask(h, w, [cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)])
            img[region] = _hsv_to_rgb(rng.uniform(*look["hue"]), rng.uniform(*look["sat"]), rng.uniform(*look["val"]))
        else:             # shape only: a class silhouette in flat gray, smaller than the objects
            scale = rng.uniform(0.12, 0.22) * short
            body, dark = _shape_parts(rng, str(look["shape"]))
            region = _polys_mask(h, w, _place(body + dark, cx, cy, scale, 1.0, angle, False))
            img[region] = _neutral_colour(rng)
    return np.clip(img, 0, 255)


def _learnable_object(rng: np.random.Generator, h: int, w: int, cid: int,
                      owner: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float, float, float, List[np.ndarray]]]:
    """Place one object of synthetic class ``cid``: (region, (cx, cy, scale, angle, dark parts))."""
    look = CLASS_LOOKS[cid]
    short = min(h, w)
    placed = None
    for _attempt in range(12):
        lo, hi = LEARNABLE_SIZE_RANGE
        scale = (lo + (hi - lo) * rng.random()) * short / 2
        aspect = rng.uniform(0.8, 1.25)
        angle = rng.uniform(-0.6, 0.6)
        mirror = bool(rng.random() < 0.5)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        body, dark = _shape_parts(rng, str(look["shape"]))
        body = _place(body, cx, cy, scale, aspect, angle, mirror)
        dark = _place(dark, cx, cy, scale, aspect, angle, mirror)
        region = _polys_mask(h, w, body + dark)
        area = int(region.sum())
        if area < 40:
            continue
        placed = (region, (cx, cy, scale, angle, dark))
        if int((region & (owner > 0)).sum()) <= MAX_OCCLUSION * area:
            break
    if placed is None:
        body, dark = _shape_parts(rng, str(look["shape"]))
        scale = 0.3 * short
        body = _place(body, w / 2, h / 2, scale, 1.0, 0.0, False)
        dark = _place(dark, w / 2, h / 2, scale, 1.0, 0.0, False)
        placed = (_polys_mask(h, w, body + dark), (w / 2, h / 2, scale, 0.0, dark))
    return placed


def _draw_learnable(rng: np.random.Generator, img: np.ndarray, h: int, w: int, cid: int,
                    owner: np.ndarray) -> np.ndarray:
    region, (cx, cy, scale, angle, dark) = _learnable_object(rng, h, w, cid, owner)
    _paint_look(img, region, rng, CLASS_LOOKS[cid], cx, cy, scale, angle)
    if dark:
        wheels = _polys_mask(h, w, dark)
        tone = rng.uniform(25, 55)
        img[wheels] = tone
        hub = _polys_mask(h, w, [(p - p.mean(0)) * 0.4 + p.mean(0) for p in dark])
        img[hub] = tone + 90
    return region


# --------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------
def make_sample(rng: np.random.Generator, height: int, width: int,
                classes_index: Sequence[Tuple[str, int]] = VOC_INDEX, *,
                num_objects: Optional[int] = None, class_ids: Optional[Sequence[int]] = None,
                grayscale: bool = False, background: Callable = _neutral_background,
                draw_object: Callable = _draw_learnable
                ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[str, BBox]]]:
    """Draw one synthetic image with its segmentation mask.

    Args:
        rng: the generator; all randomness comes from it.
        height, width: image size in pixels.
        classes_index: for each synthetic class (order of ``SYNTHETIC_CLASSES``) its
            (name, mask index) in the target layout: ``VOC_INDEX`` or ``COCO_INDEX``.
        num_objects: number of objects; ``None`` draws 1-3, ``0`` gives an image without any.
        class_ids: optional synthetic class ids (0..4) of the objects; its length sets
            ``num_objects`` when that is ``None``.  Drawn at random when ``None``.
        grayscale: return a single-channel image.
        background, draw_object: the style. ``background(rng, h, w)`` returns the float
            (h, w, 3) canvas; ``draw_object(rng, image, h, w, class_id, owner)`` paints one object
            into it and returns its (h, w) bool region (``owner`` marks the visible parts of the
            objects drawn so far). The defaults draw the learnable style (``CLASS_LOOKS`` on a
            neutral cluttered background).

    Returns:
        image: uint8 (H, W, 3) RGB, or (H, W) when ``grayscale``.
        mask: uint8 (H, W): 0 background, the class index inside objects, 255 in a ~3 px band
            around each object's visible region (computed after occlusion).
        objects: one (name, (xmin, ymin, xmax, ymax)) per drawn object in drawing order, with
            0-based inclusive pixel coordinates of the whole drawn shape clipped to the image
            (an object hidden by later ones is still listed, as in real VOC annotations).
    """
    h, w = int(height), int(width)
    if len(classes_index) != len(SYNTHETIC_CLASSES):
        raise ValueError(f"classes_index needs {len(SYNTHETIC_CLASSES)} entries, got {len(classes_index)}")
    if num_objects is None:
        num_objects = len(class_ids) if class_ids is not None else int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    if class_ids is None:
        class_ids = [int(c) for c in rng.integers(0, len(SYNTHETIC_CLASSES), size=num_objects)]
    if len(class_ids) != num_objects:
        raise ValueError("class_ids and num_objects disagree")

    img = background(rng, h, w)
    owner = np.zeros((h, w), np.uint8)  # 0 = background, k + 1 = k-th object (visible part)
    objects: List[Tuple[str, BBox]] = []
    for k, cid in enumerate(class_ids):
        region = draw_object(rng, img, h, w, cid, owner)
        owner[region] = k + 1
        x, y, bw, bh = cv2.boundingRect(region.astype(np.uint8))
        objects.append((classes_index[cid][0], (int(x), int(y), int(x + bw - 1), int(y + bh - 1))))
    return _camera(rng, img, grayscale), _mask_with_bands(owner, class_ids, classes_index), objects


def _mask_with_bands(owner: np.ndarray, class_ids: Sequence[int],
                     classes_index: Sequence[Tuple[str, int]]) -> np.ndarray:
    """uint8 (h, w) mask: each object's visible part (``owner == k + 1``) holds its class index,
    then ``IGNORE_INDEX`` in a band along every object's boundary."""
    mask = np.zeros(owner.shape, np.uint8)
    bands = []
    for k, cid in enumerate(class_ids):
        visible = owner == k + 1
        mask[visible] = classes_index[cid][1]
        bands.append(_boundary_band(visible))
    for band in bands:
        mask[band] = IGNORE_INDEX
    return mask


def _camera(rng: np.random.Generator, img: np.ndarray, grayscale: bool) -> np.ndarray:
    """The float canvas as a camera saw it: global illumination, slight blur and sensor noise,
    rounded to uint8 (h, w, 3), or (h, w) when ``grayscale``."""
    img *= (1.0 + 0.12 * _smooth_field(rng, img.shape[0], img.shape[1], (3, 3), 1))
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += rng.normal(0.0, rng.uniform(2.0, 6.0), size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


# --------------------------------------------------------------------------------------------
# File writers
# --------------------------------------------------------------------------------------------
def _image_rng(seed: int, tag: int, number: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, int(number)])


def _special_sets(rng: np.random.Generator, all_numbers: Sequence[int], labelled: Sequence[int]) -> Tuple[set, set]:
    """Numbers of the grayscale images (~5% of all) and of the empty images (~2% of labelled)."""
    n_all, n_lab = len(all_numbers), len(labelled)
    n_gray = max(1, int(round(GRAY_FRACTION * n_all))) if n_all >= 10 else 0
    n_empty = max(1, int(round(EMPTY_FRACTION * n_lab))) if n_lab >= 20 else 0
    gray = set(int(i) for i in rng.choice(np.asarray(all_numbers), size=n_gray, replace=False)) if n_gray else set()
    empty = set(int(i) for i in rng.choice(np.asarray(labelled), size=n_empty, replace=False)) if n_empty else set()
    return gray, empty


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, quality=JPEG_QUALITY)


def _save_index_png(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask).save(path)  # (H, W) uint8 -> mode 'L'


def _save_palette_png(path: Path, mask: np.ndarray, palette: bytes) -> None:
    h, w = mask.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
    im.putpalette(palette)
    im.save(path)


def _voc_xml(image_id: str, image: np.ndarray, objects: Sequence[Tuple[str, BBox]],
             rng: np.random.Generator) -> bytes:
    """VOC annotation XML; boxes in VOC's 1-based pixel coordinates; some persons get parts."""
    h, w = image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "Synthetic VOC-layout data"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(w)
    ET.SubElement(size, "height").text = str(h)
    ET.SubElement(size, "depth").text = str(1 if image.ndim == 2 else 3)
    ET.SubElement(root, "segmented").text = "1"

    def add_box(parent: ET.Element, box: Tuple[int, int, int, int]) -> None:
        bb = ET.SubElement(parent, "bndbox")
        for key, val in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, key).text = str(int(val) + 1)

    for name, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        truncated = x0 == 0 or y0 == 0 or x1 == w - 1 or y1 == h - 1
        ET.SubElement(obj, "truncated").text = "1" if truncated else "0"
        ET.SubElement(obj, "difficult").text = "0"
        add_box(obj, (x0, y0, x1, y1))
        if name == "person" and rng.random() < 0.5:
            part = ET.SubElement(obj, "part")
            ET.SubElement(part, "name").text = "head"
            bw, bh = x1 - x0, y1 - y0
            add_box(part, (x0 + int(0.3 * bw), y0, x1 - int(0.3 * bw), y0 + int(0.35 * bh)))
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_list(path: Path, ids: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in sorted(ids)))


def voc_exists(out_dir: os.PathLike) -> bool:
    """Whether ``out_dir/VOC2012`` already holds a (synthetic or real) VOC dataset."""
    voc = Path(out_dir) / "VOC2012"
    return (voc / "ImageSets" / "Segmentation" / "val.txt").is_file() and (voc / "JPEGImages").is_dir()


def coco_exists(out_dir: os.PathLike) -> bool:
    """Whether ``out_dir/coco`` already holds a COCO-layout dataset."""
    coco = Path(out_dir) / "coco"
    return all((coco / sub / split).is_dir() for sub in ("JPEGImages", "SegmentationClass")
               for split in ("train2014", "val2014"))


def write_voc(out_dir: os.PathLike, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
              num_test: int = DEFAULT_NUM_TEST, seed: int = 0,
              image_size: Optional[Tuple[int, int]] = None, sample: Callable = make_sample) -> Path:
    """Write a fresh VOC-layout dataset to ``out_dir/VOC2012`` (replacing any there); returns it.

    ``num_train`` images form train_aug (masks in SegmentationClassAug, XML), of which about a
    quarter also form ``train`` (palette masks in SegmentationClass); ``num_val`` images have
    both kinds of mask and XML; ``num_test`` images have a JPEG only.  Ids are
    ``2012_%06d`` from 1, the three splits interleaved. ``image_size`` = (height, width) gives
    every image that size instead of the demo's random 96-208 px sides (benchmarks at real sizes);
    ``sample`` draws each image (:func:`make_sample`, or a function with its arguments and
    outputs).
    """
    num_train, num_val, num_test = int(num_train), int(num_val), int(num_test)
    if min(num_train, num_val, num_test) < 0:
        raise ValueError("image counts must be >= 0")
    voc = Path(out_dir) / "VOC2012"
    if voc.exists():
        shutil.rmtree(voc)
    dirs = {k: voc / k for k in ("JPEGImages", "SegmentationClassAug", "SegmentationClass", "Annotations")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    sets_dir = voc / "ImageSets" / "Segmentation"
    sets_dir.mkdir(parents=True, exist_ok=True)

    total = num_train + num_val + num_test
    ids = [f"2012_{i + 1:06d}" for i in range(total)]
    split_rng = np.random.default_rng([int(seed), _VOC_SPLIT_TAG])
    perm = split_rng.permutation(total)
    train_aug = sorted(int(i) for i in perm[:num_train])
    val = sorted(int(i) for i in perm[num_train:num_train + num_val])
    test = sorted(int(i) for i in perm[num_train + num_val:])
    n_small = max(1, int(round(num_train / 4))) if num_train else 0
    train = sorted(int(i) for i in split_rng.choice(np.asarray(train_aug, dtype=np.int64), size=n_small, replace=False)) \
        if n_small else []
    gray, empty = _special_sets(split_rng, list(range(total)), train_aug + val)

    labelled, palette_set = set(train_aug) | set(val), set(train) | set(val)
    palette = voc_colormap().reshape(-1).tobytes()
    for i in range(total):
        rng = _image_rng(seed, _VOC_TAG, i)
        h, w = _image_size(rng, image_size)
        image, mask, objects = sample(rng, h, w, VOC_INDEX, num_objects=0 if i in empty else None,
                                      grayscale=i in gray)
        _save_jpeg(dirs["JPEGImages"] / f"{ids[i]}.jpg", image)
        if i in labelled:
            _save_index_png(dirs["SegmentationClassAug"] / f"{ids[i]}.png", mask)
            (dirs["Annotations"] / f"{ids[i]}.xml").write_bytes(_voc_xml(ids[i], image, objects, rng))
        if i in palette_set:
            _save_palette_png(dirs["SegmentationClass"] / f"{ids[i]}.png", mask, palette)

    _write_list(sets_dir / "train.txt", [ids[i] for i in train])
    _write_list(sets_dir / "val.txt", [ids[i] for i in val])
    _write_list(sets_dir / "test.txt", [ids[i] for i in test])
    return voc


def write_coco(out_dir: os.PathLike, num_train: int = DEFAULT_COCO_TRAIN, num_val: int = DEFAULT_COCO_VAL,
               seed: int = 0, image_size: Optional[Tuple[int, int]] = None) -> Path:
    """Write a fresh COCO-2014-layout dataset to ``out_dir/coco`` (replacing any there); returns it.

    Image numbers are sparse and distinct like real COCO ids; masks are (H, W) 'L' PNGs with
    COCO indices (0 background, 1..80, 255 boundary band).
    """
    num_train, num_val = int(num_train), int(num_val)
    if min(num_train, num_val) < 0:
        raise ValueError("image counts must be >= 0")
    coco = Path(out_dir) / "coco"
    if coco.exists():
        shutil.rmtree(coco)
    for sub in ("JPEGImages", "SegmentationClass"):
        for split in ("train2014", "val2014"):
            (coco / sub / split).mkdir(parents=True, exist_ok=True)

    total = num_train + num_val
    split_rng = np.random.default_rng([int(seed), _COCO_SPLIT_TAG])
    numbers = np.sort(split_rng.choice(np.arange(1, 581930), size=total, replace=False))
    perm = split_rng.permutation(total)
    is_train = np.zeros(total, bool)
    is_train[perm[:num_train]] = True
    gray, empty = _special_sets(split_rng, list(range(total)), list(range(total)))
    for i in range(total):
        split = "train2014" if is_train[i] else "val2014"
        name = f"COCO_{split}_{int(numbers[i]):012d}"
        rng = _image_rng(seed, _COCO_TAG, i)
        h, w = _image_size(rng, image_size)
        image, mask, _ = make_sample(rng, h, w, COCO_INDEX, num_objects=0 if i in empty else None,
                                     grayscale=i in gray)
        _save_jpeg(coco / "JPEGImages" / split / f"{name}.jpg", image)
        _save_index_png(coco / "SegmentationClass" / split / f"{name}.png", mask)
    return coco


def write_all(out_dir: os.PathLike, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
              num_test: int = DEFAULT_NUM_TEST, num_coco_train: int = DEFAULT_COCO_TRAIN,
              num_coco_val: int = DEFAULT_COCO_VAL, seed: int = 0, coco: bool = True,
              overwrite: bool = False, image_size: Optional[Tuple[int, int]] = None
              ) -> Dict[str, Dict[str, object]]:
    """Write the VOC (and unless ``coco=False`` the COCO) dataset under ``out_dir``.

    A layout already present is kept unless ``overwrite``.  Returns
    ``{"voc": {"path": Path, "written": bool}, "coco": {...}}`` (no "coco" key when skipped
    by ``coco=False``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Dict[str, object]] = {}
    if overwrite or not voc_exists(out):
        result["voc"] = {"path": write_voc(out, num_train, num_val, num_test, seed, image_size),
                         "written": True}
    else:
        result["voc"] = {"path": out / "VOC2012", "written": False}
    if coco:
        if overwrite or not coco_exists(out):
            result["coco"] = {"path": write_coco(out, num_coco_train, num_coco_val, seed, image_size),
                              "written": True}
        else:
            result["coco"] = {"path": out / "coco", "written": False}
    return result


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        formatter_class=DefaultsHelpFormatter,
        description="Write the synthetic segmentation dataset in the PASCAL VOC 2012 layout "
                    "(OUT/VOC2012) and the COCO 2014 layout (OUT/coco).")
    p.add_argument("--out", required=True, help="output folder; VOC2012/ and coco/ are created inside it")
    p.add_argument("--num_train", type=int, default=DEFAULT_NUM_TRAIN,
                   help="VOC training (train_aug) images; about a quarter also form 'train' (default: %(default)s)")
    p.add_argument("--num_val", type=int, default=DEFAULT_NUM_VAL, help="VOC val images (default: %(default)s)")
    p.add_argument("--num_test", type=int, default=DEFAULT_NUM_TEST,
                   help="VOC test images, JPEG only (default: %(default)s)")
    p.add_argument("--num_coco_train", type=int, default=DEFAULT_COCO_TRAIN,
                   help="COCO train2014 images (default: %(default)s)")
    p.add_argument("--num_coco_val", type=int, default=DEFAULT_COCO_VAL,
                   help="COCO val2014 images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes (default: %(default)s)")
    p.add_argument("--coco", action=argparse.BooleanOptionalAction, default=True,
                   help="also write the COCO layout (default: %(default)s)")
    p.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"),
                   help="give every image this size (for example 375 500 for VOC-sized benchmarks) "
                   "instead of the demo's 96-208 px sides")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="rewrite a layout that already exists in --out instead of keeping it (default: %(default)s)")
    return p


def _check_writable(out: Path) -> None:
    """Raise OSError if ``out`` cannot be created or written into."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test_"):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the process exit code (0 ok, 2 bad arguments / --out)."""
    args = _parser().parse_args(argv)
    counts = [args.num_train, args.num_val, args.num_test, args.num_coco_train, args.num_coco_val]
    if min(counts) < 0:
        print("error: image counts must be >= 0", file=sys.stderr)
        return 2
    if args.image_size is not None and min(args.image_size) < 32:
        print("error: --image_size needs both sides >= 32", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        _check_writable(out)
    except OSError as exc:
        print(f"error: cannot write to --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        result = write_all(out, args.num_train, args.num_val, args.num_test, args.num_coco_train,
                           args.num_coco_val, seed=args.seed, coco=args.coco, overwrite=args.overwrite,
                           image_size=args.image_size)
    except OSError as exc:
        print(f"error: writing the dataset under {args.out} failed: {exc.strerror or exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    parts = []
    if result["voc"]["written"]:
        parts.append(f"VOC2012 {args.num_train} train_aug / {args.num_val} val / {args.num_test} test")
    else:
        parts.append("VOC2012 exists, kept (use --overwrite to rewrite)")
    if "coco" in result:
        if result["coco"]["written"]:
            parts.append(f"coco {args.num_coco_train} train2014 / {args.num_coco_val} val2014")
        else:
            parts.append("coco exists, kept (use --overwrite to rewrite)")
    print(f"synthetic data in {out}: {'; '.join(parts)} (seed {args.seed}, {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
