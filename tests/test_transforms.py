"""The training augmentation of docs/data.md#loading-rules: sizes, img_box semantics, padding and normalisation."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import (IMAGENET_MEAN, IMAGENET_STD, TrainAugmentation, normalize,
                                 random_pad_crop, random_rescale)


@pytest.mark.parametrize("h,w", [(30, 40), (100, 120), (30, 200), (200, 30), (64, 64), (65, 63)])
def test_pad_crop_box_covers_exactly_the_real_pixels(h, w):
    np.random.seed(h * 1000 + w)
    crop_size = 64
    for _ in range(20):
        img = np.full((h, w, 3), 200, dtype=np.uint8)
        crop, box = random_pad_crop(img, crop_size)
        assert crop.shape == (crop_size, crop_size, 3) and box.dtype == np.int16
        y0, y1, x0, x1 = box.tolist()
        assert y1 - y0 == min(h, crop_size) and x1 - x0 == min(w, crop_size)
        inside = np.zeros((crop_size, crop_size), bool)
        inside[y0:y1, x0:x1] = True
        assert (crop[inside] == 200).all()
        assert (crop[~inside] == 0).all(), "padding must be black in uint8 pixel space"


def test_pad_crop_moves_window_on_large_sides_and_image_on_small_sides():
    np.random.seed(0)
    offsets = set()
    for _ in range(30):
        img = np.arange(20 * 100 * 3, dtype=np.int64).reshape(20, 100, 3).astype(np.uint8)
        _, box = random_pad_crop(img, 50)
        assert box[2] == 0 and box[3] == 50          # width 100 >= 50: window moves, no padding
        offsets.add(int(box[0]))
        assert box[1] - box[0] == 20                  # height 20 < 50: image pasted at a random row
    assert len(offsets) > 5


def test_rescale_stays_within_half_to_double():
    np.random.seed(0)
    img = Image.new("RGB", (100, 60))
    sizes = [random_rescale(img).size for _ in range(200)]
    ws = np.array([s[0] for s in sizes])
    assert ws.min() >= 50 and ws.max() <= 200 and ws.max() - ws.min() > 100
    for w, h in sizes:
        assert abs(w / 100 - h / 60) < 0.05


def test_normalize_uses_imagenet_mean_and_std():
    x = normalize(np.zeros((2, 3, 3), np.uint8))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expected = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_train_augmentation_output_shapes_and_box():
    np.random.seed(1)
    torch.manual_seed(1)
    aug = TrainAugmentation(crop_size=96)
    for h, w in [(40, 50), (300, 200), (96, 96)]:
        img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        x, box = aug(img)
        assert x.shape == (3, 96, 96) and x.dtype == torch.float32
        assert box.dtype == torch.int16 and box.shape == (4,)
        assert 0 <= box[0] < box[1] <= 96 and 0 <= box[2] < box[3] <= 96


def _bright_fraction(x, box):
    y0, y1, x0, x1 = box.tolist()
    bright = x.mean(0) > 0.5
    inside = bright[y0 + 4:y1 - 4, x0 + 4:x1 - 4].float().mean()
    return inside


@pytest.mark.parametrize("mirror", [False, True])
def test_coco_flip_mirrors_the_box_only_when_asked(mirror):
    aug = TrainAugmentation(crop_size=96, coco_flip=True, mirror_box_on_coco_flip=mirror)
    aug.jitter = aug.grayscale = lambda im: im
    img = np.full((80, 30, 3), 255, np.uint8)
    mismatches = 0
    for seed in range(40):
        np.random.seed(seed)
        x, box = aug(img)
        if box[2] > 0 or box[3] < 96:
            mismatches += int(_bright_fraction(x, box) < 0.99)
    if mirror:
        assert mismatches == 0
    else:
        assert mismatches > 5, "the original's COCO flip leaves img_box unmirrored (docs/method.md#quirks)"
