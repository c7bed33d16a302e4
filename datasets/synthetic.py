"""Synthetic segmentation data in the PASCAL VOC 2012 and MS COCO 2014 on-disk layouts.

This is the project's demo data and its test data.  Real VOC / COCO cannot be shipped or
downloaded in every environment, so this module draws a small dataset that has the same
folders, file names, file formats and label conventions as the real ones, with classes that
image-level labels can separate but no shortcut (such as colour) gives away. It is hard for a
randomly initialised model: the demo's 480 CPU steps do not learn it (see the README's Demo
section). Its design:

* Five foreground classes (``SYNTHETIC_CLASSES``), each with its own **shape** and its own
  **texture pattern** (see ``CLASS_SHAPES`` / ``CLASS_TEXTURES``).  An object is painted with
  two colours mixed by its texture; both colours are drawn per object from the same
  distribution as the background colours, so colour says nothing about the class.
* Cluttered backgrounds: smooth random-colour fields, an illumination gradient, sensor noise,
  and distractors labelled background (lines, small solid blobs, solid or smooth patches, thin
  textured strips).  A distractor never has a class's shape *and* texture together: blobs and
  patches are untextured, and textured strips are thin rectangles that never carry the
  checkerboard of the (rounded-rectangle) car class.
* One to three objects per image, 25%-65% of the short image side, random position, rotation
  and aspect, with mild occlusion (later objects are drawn over earlier ones).
* Masks hold 0 for background, the class index inside objects and ``IGNORE_INDEX`` (255) in a
  band of about 3 px along every object's visible boundary, like the real VOC annotations.
* Landscape, portrait and square images between 96 and 208 px a side (sized for the demo's
  128-pixel crops as VOC's images are for 448), about 5% grayscale
  images (single-channel JPEGs) and about 2% images without any object.

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
                                 [--no-coco] [--overwrite]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from xml.etree import ElementTree as ET

import cv2
import numpy as np
from PIL import Image

from datasets.classes import COCO_CLASSES, IGNORE_INDEX, VOC_CLASSES, voc_colormap

# (VOC name, COCO name) of the five foreground classes; the position in this tuple is the
# "synthetic class id" used by ``make_sample``.
SYNTHETIC_CLASSES: Tuple[Tuple[str, str], ...] = (
    ("aeroplane", "airplane"),
    ("car", "car"),
    ("cat", "cat"),
    ("dog", "dog"),
    ("person", "person"),
)
# Shape and texture of each synthetic class (same order as SYNTHETIC_CLASSES).
CLASS_SHAPES: Tuple[str, ...] = ("ellipse", "rounded_rectangle", "triangle", "star", "ring")
CLASS_TEXTURES: Tuple[str, ...] = ("stripes", "checkerboard", "dots", "concentric_rings", "fine_noise")

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
OBJECT_SIZE_RANGE = (0.25, 0.65)  # object extent as a fraction of the short image side
MAX_OCCLUSION = 0.3  # at most this fraction of a new object may cover earlier ones (best effort)

_VOC_TAG, _COCO_TAG, _VOC_SPLIT_TAG, _COCO_SPLIT_TAG = 0, 1, 2, 3

BBox = Tuple[int, int, int, int]


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------
def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) float32 RGB colours in [0, 255]; the one distribution for objects and background."""
    return rng.uniform(0.0, 255.0, size=(n, 3)).astype(np.float32)


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _colour_pair(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two (3,) colours far enough apart (in RGB and in luma) that a texture shows, even in gray."""
    c1 = _random_colours(rng, 1)[0]
    for _ in range(30):
        c2 = _random_colours(rng, 1)[0]
        if np.linalg.norm(c1 - c2) > 110.0 and abs(_luma(c1) - _luma(c2)) > 45.0:
            return c1, c2
    c2 = 255.0 - c1
    if abs(_luma(c1) - _luma(c2)) < 45.0:  # c1 close to mid gray: push the pair apart in luma
        c1 = np.clip(c1 - 60.0, 0, 255)
        c2 = np.clip(c2 + 60.0, 0, 255)
    return c1.astype(np.float32), c2.astype(np.float32)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (N, 2) points (x, y) by ``angle`` radians about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _fill_polygon(h: int, w: int, points: np.ndarray) -> np.ndarray:
    """(h, w) bool mask of the polygon with (N, 2) float (x, y) vertices."""
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def _shape_mask(rng: np.random.Generator, shape: str, h: int, w: int, cx: float, cy: float,
                size: float, angle: float) -> np.ndarray:
    """(h, w) bool mask of one ``shape`` centred at (cx, cy) with extent ~``size`` px."""
    r = size / 2.0
    centre = np.array([cx, cy])
    if shape == "ellipse":
        aspect = rng.uniform(1.4, 2.6)
        canvas = np.zeros((h, w), np.uint8)
        axes = (max(2, int(round(r))), max(2, int(round(r / aspect))))
        cv2.ellipse(canvas, (int(round(cx)), int(round(cy))), axes, np.degrees(angle), 0, 360, 1, -1)
        return canvas.astype(bool)
    if shape == "rounded_rectangle":
        aspect = rng.uniform(1.2, 2.2)
        a, b = r * 0.95, r * 0.95 / aspect
        rad = rng.uniform(0.15, 0.35) * min(a, b)
        pts = []
        for (sx, sy, start) in ((1, 1, 0.0), (-1, 1, 0.5 * np.pi), (-1, -1, np.pi), (1, -1, 1.5 * np.pi)):
            corner = np.array([sx * (a - rad), sy * (b - rad)])
            t = start + np.linspace(0.0, 0.5 * np.pi, 6)
            pts.append(corner + rad * np.stack([np.cos(t), np.sin(t)], axis=1))
        return _fill_polygon(h, w, _rotate(np.concatenate(pts), angle) + centre)
    if shape == "triangle":
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.25, 0.25, 3)
        rr = r * 1.05 * rng.uniform(0.85, 1.0, 3)
        pts = np.stack([rr * np.cos(t), rr * np.sin(t)], axis=1)
        return _fill_polygon(h, w, _rotate(pts, angle) + centre)
    if shape == "star":
        t = np.arange(10) * (np.pi / 5)
        rr = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
        pts = np.stack([rr * np.cos(t), rr * np.sin(t)], axis=1)
        return _fill_polygon(h, w, _rotate(pts, angle) + centre)
    if shape == "ring":
        aspect = rng.uniform(0.8, 1.0)
        inner = rng.uniform(0.42, 0.58)
        canvas = np.zeros((h, w), np.uint8)
        c = (int(round(cx)), int(round(cy)))
        deg = np.degrees(angle)
        cv2.ellipse(canvas, c, (max(3, int(round(r))), max(3, int(round(r * aspect)))), deg, 0, 360, 1, -1)
        cv2.ellipse(canvas, c, (max(1, int(round(r * inner))), max(1, int(round(r * aspect * inner)))),
                    deg, 0, 360, 0, -1)
        return canvas.astype(bool)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(rng: np.random.Generator, texture: str, xs: np.ndarray, ys: np.ndarray,
             cx: float, cy: float, angle: float) -> np.ndarray:
    """Texture weight in [0, 1] at pixel coordinates ``xs``/``ys`` (broadcastable, (hb, wb)).

    Coordinates are taken in the object's frame (centre (cx, cy), rotated by ``angle``), so the
    pattern turns with the object.
    """
    dx, dy = xs - cx, ys - cy
    c, s = np.cos(angle), np.sin(angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    if texture == "stripes":
        period = rng.uniform(6.0, 11.0)
        return (np.mod(u + rng.uniform(0, period), period) < period / 2).astype(np.float32)
    if texture == "checkerboard":
        period = rng.uniform(6.0, 11.0)
        iu = np.floor((u + rng.uniform(0, period)) / period)
        iv = np.floor((v + rng.uniform(0, period)) / period)
        return (np.mod(iu + iv, 2) == 1).astype(np.float32)
    if texture == "dots":
        period = rng.uniform(8.0, 12.0)
        rad = rng.uniform(0.26, 0.34) * period
        mu = np.mod(u, period) - period / 2
        mv = np.mod(v, period) - period / 2
        return (mu * mu + mv * mv < rad * rad).astype(np.float32)
    if texture == "concentric_rings":
        period = rng.uniform(6.0, 10.0)
        dist = np.sqrt(dx * dx + dy * dy)
        return (np.mod(dist + rng.uniform(0, period), period) < period / 2).astype(np.float32)
    if texture == "fine_noise":
        shape = np.broadcast(xs, ys).shape
        cell = 2
        low = (rng.random((shape[0] // cell + 1, shape[1] // cell + 1)) < 0.5).astype(np.float32)
        return np.repeat(np.repeat(low, cell, axis=0), cell, axis=1)[: shape[0], : shape[1]]
    raise ValueError(f"unknown texture {texture!r}")


def _paint(image: np.ndarray, region: np.ndarray, rng: np.random.Generator, texture: str,
           cx: float, cy: float, angle: float) -> None:
    """Paint ``region`` ((h, w) bool) of float ``image`` ((h, w, 3)) with a two-colour texture."""
    x, y, bw, bh = cv2.boundingRect(region.astype(np.uint8))
    if bw == 0 or bh == 0:
        return
    ys, xs = np.mgrid[y:y + bh, x:x + bw].astype(np.float32)
    t = _texture(rng, texture, xs, ys, cx, cy, angle)
    c1, c2 = _colour_pair(rng)
    colours = c1 + (c2 - c1) * t[..., None]
    sub = region[y:y + bh, x:x + bw]
    image[y:y + bh, x:x + bw][sub] = colours[sub]


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: Tuple[int, int], channels: int) -> np.ndarray:
    """(h, w, channels) float32 smooth random field, N(0, 1) on a coarse grid upsampled cubically."""
    grid = rng.normal(0.0, 1.0, size=(cells[0], cells[1], channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 cluttered background: smooth colour field, gradient, distractors."""
    gh, gw = (int(v) for v in rng.integers(2, 6, size=2))
    grid = _random_colours(rng, gh * gw).reshape(gh, gw, 3)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, 3)
    img += 18.0 * _smooth_field(rng, h, w, (max(2, h // 24), max(2, w // 24)), 3)
    # Linear colour gradient across the image.
    direction = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xs * np.cos(direction) + ys * np.sin(direction)) / max(h, w)
    img += ramp[..., None] * rng.uniform(-60, 60, size=3).astype(np.float32)
    img = np.clip(img, 0, 255)

    short = min(h, w)
    # Solid or smooth patches (random quadrilaterals).
    for _ in range(int(rng.integers(0, 4))):
        size = rng.uniform(0.08, 0.3) * short
        centre = rng.uniform([0, 0], [w, h])
        pts = centre + rng.uniform(-size / 2, size / 2, size=(4, 2))
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        region = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(region, hull, 1)
        region = region.astype(bool)
        colour = _random_colours(rng, 1)[0]
        if rng.random() < 0.5:
            img[region] = colour
        else:
            field = colour + 35.0 * _smooth_field(rng, h, w, (3, 3), 3)
            img[region] = field[region]
    # Small solid blobs.
    for _ in range(int(rng.integers(1, 6))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, max(3, int(0.06 * short)))), int(rng.integers(2, max(3, int(0.06 * short)))))
        colour = tuple(float(c) for c in _random_colours(rng, 1)[0])
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    # Lines.
    for _ in range(int(rng.integers(2, 7))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(float(c) for c in _random_colours(rng, 1)[0])
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    # Thin textured strips: a rectangle shape with a non-checkerboard class texture, a pairing
    # that no class has.
    for _ in range(int(rng.random() < 0.4) + int(rng.random() < 0.15)):
        length = rng.uniform(0.2, 0.5) * short
        width = rng.uniform(5.0, 10.0)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, np.pi)
        corners = np.array([[-length / 2, -width / 2], [length / 2, -width / 2],
                            [length / 2, width / 2], [-length / 2, width / 2]])
        region = _fill_polygon(h, w, _rotate(corners, angle) + np.array([cx, cy]))
        texture = str(rng.choice([t for t in CLASS_TEXTURES if t != "checkerboard"]))
        _paint(img, region, rng, texture, cx, cy, angle)
    return img


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
# One sample
# --------------------------------------------------------------------------------------------
def make_sample(rng: np.random.Generator, height: int, width: int,
                classes_index: Sequence[Tuple[str, int]] = VOC_INDEX, *,
                num_objects: Optional[int] = None, class_ids: Optional[Sequence[int]] = None,
                grayscale: bool = False) -> Tuple[np.ndarray, np.ndarray, List[Tuple[str, BBox]]]:
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

    img = _background(rng, h, w)
    owner = np.zeros((h, w), np.uint8)  # 0 = background, k + 1 = k-th object (visible part)
    objects: List[Tuple[str, BBox]] = []
    short = min(h, w)
    for k, cid in enumerate(class_ids):
        shape = CLASS_SHAPES[cid]
        placed = None  # (region, cx, cy, angle) of the latest usable candidate
        for _attempt in range(12):
            # Skewed towards the larger sizes (mean ~0.48 of the short side).
            lo, hi = OBJECT_SIZE_RANGE
            size = (lo + (hi - lo) * rng.beta(1.6, 1.2)) * short
            cx = rng.uniform(0.1, 0.9) * w
            cy = rng.uniform(0.1, 0.9) * h
            angle = rng.uniform(0, 2 * np.pi)
            cand = _shape_mask(rng, shape, h, w, cx, cy, size, angle)
            area = int(cand.sum())
            if area < 40:
                continue
            placed = (cand, cx, cy, angle)
            if int((cand & (owner > 0)).sum()) <= MAX_OCCLUSION * area:
                break
        if placed is None:  # practically unreachable: fall back to a central object
            cx, cy, angle = w / 2, h / 2, 0.0
            placed = (_shape_mask(rng, shape, h, w, cx, cy, 0.4 * short, angle), cx, cy, angle)
        region, cx, cy, angle = placed
        _paint(img, region, rng, CLASS_TEXTURES[cid], cx, cy, angle)
        owner[region] = k + 1
        x, y, bw, bh = cv2.boundingRect(region.astype(np.uint8))
        objects.append((classes_index[cid][0], (int(x), int(y), int(x + bw - 1), int(y + bh - 1))))

    mask = np.zeros((h, w), np.uint8)
    bands = []
    for k, cid in enumerate(class_ids):
        visible = owner == k + 1
        mask[visible] = classes_index[cid][1]
        bands.append(_boundary_band(visible))
    for band in bands:
        mask[band] = IGNORE_INDEX

    # Global illumination, slight blur and sensor noise.
    img *= (1.0 + 0.12 * _smooth_field(rng, h, w, (3, 3), 1))
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += rng.normal(0.0, rng.uniform(2.0, 6.0), size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image, mask, objects


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
              image_size: Optional[Tuple[int, int]] = None) -> Path:
    """Write a fresh VOC-layout dataset to ``out_dir/VOC2012`` (replacing any there); returns it.

    ``num_train`` images form train_aug (masks in SegmentationClassAug, XML), of which about a
    quarter also form ``train`` (palette masks in SegmentationClass); ``num_val`` images have
    both kinds of mask and XML; ``num_test`` images have a JPEG only.  Ids are
    ``2012_%06d`` from 1, the three splits interleaved. ``image_size`` = (height, width) gives
    every image that size instead of the demo's random 96-208 px sides (benchmarks at real sizes).
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
        image, mask, objects = make_sample(rng, h, w, VOC_INDEX, num_objects=0 if i in empty else None,
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
              overwrite: bool = False,
              image_size: Optional[Tuple[int, int]] = None) -> Dict[str, Dict[str, object]]:
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
