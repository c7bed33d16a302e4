"""The "hard" synthetic style, drawn only by tests/test_synthetic.py.

Colour says nothing about the class here (object colours are drawn from the background's
distribution): only a shape (``CLASS_SHAPES``) and a fine texture (``CLASS_TEXTURES``) per class
identify it, objects span 25%-65% of the short side, on random-colour clutter. A randomly
initialised model does not learn it within the demo's budget. The writers, the masks with their
ignore band and the camera effects are those of :mod:`datasets.synthetic`; this module supplies
the background and the objects (``make_sample``'s ``background`` and ``draw_object``).
"""
from typing import Sequence, Tuple

import cv2
import numpy as np

from datasets.synthetic import MAX_OCCLUSION, VOC_INDEX, _rotate, _smooth_field, make_sample, write_voc

# Shape and texture of each synthetic class (same order as datasets.synthetic.SYNTHETIC_CLASSES).
CLASS_SHAPES: Tuple[str, ...] = ("ellipse", "rounded_rectangle", "triangle", "star", "ring")
CLASS_TEXTURES: Tuple[str, ...] = ("stripes", "checkerboard", "dots", "concentric_rings", "fine_noise")
OBJECT_SIZE_RANGE = (0.25, 0.65)  # object extent as a fraction of the short image side


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



def hard_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
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


def draw_hard_object(rng: np.random.Generator, img: np.ndarray, h: int, w: int, cid: int,
                     owner: np.ndarray) -> np.ndarray:
    """Place one object of synthetic class ``cid`` (its shape, its texture in two random colours)
    and paint it into ``img``; returns its (h, w) bool region."""
    shape = CLASS_SHAPES[cid]
    short = min(h, w)
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
    return region


def make_hard_sample(rng: np.random.Generator, height: int, width: int,
                     classes_index: Sequence[Tuple[str, int]] = VOC_INDEX, **kwargs):
    """:func:`datasets.synthetic.make_sample` in the hard style: same arguments and outputs."""
    return make_sample(rng, height, width, classes_index, background=hard_background,
                       draw_object=draw_hard_object, **kwargs)


def write_hard_voc(out_dir, num_train: int, num_val: int, num_test: int, seed: int = 0):
    """:func:`datasets.synthetic.write_voc` with every image drawn in the hard style."""
    return write_voc(out_dir, num_train, num_val, num_test, seed, sample=make_hard_sample)
