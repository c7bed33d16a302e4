"""Training-time augmentation of one sample (docs/data.md#loading-rules); the input statistics
are :mod:`utils.input_stats`.

Random rescale (0.5-2.0, PIL bilinear) -> horizontal flip -> pad with black and crop to
``crop_size`` (``img_box`` marks the real pixels) -> colour jitter (p 0.8), grayscale (p 0.2),
Gaussian blur (always) -> normalise with the encoder's mean and std (the ImageNet constants on the
paper's ViT/DeiT path).

Geometry is drawn from numpy's global RNG and the photometric part from torch's, both of which
the data loader seeds per worker; the main process is seeded per rank by the training script.
"""
from typing import Tuple

import numpy as np
import torch
from PIL import Image, ImageFilter

from utils.input_stats import PAPER_STATS, InputStats

def random_rescale(img: Image.Image, scale_range: Tuple[float, float]) -> Image.Image:
    """Resize by ``r ~ U(scale_range)`` to ``(floor(r W), floor(r H))`` with PIL bilinear."""
    r = np.random.uniform(*scale_range)
    w, h = img.size
    return img.resize((max(1, int(r * w)), max(1, int(r * h))), resample=Image.BILINEAR)


def random_hflip(img: Image.Image, p: float = 0.5) -> Image.Image:
    if np.random.rand() < p:
        return img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def random_pad_crop(img: np.ndarray, crop_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Paste ``img (h, w, 3)`` at a random offset on a black canvas of at least ``crop_size`` per
    side, then take a random ``crop_size`` window.

    Returns the crop ``(crop_size, crop_size, 3)`` uint8 and ``img_box`` int16
    ``[y0, y1, x0, x1]``: the half-open area of the crop that holds real image, not padding.
    """
    h, w = img.shape[:2]
    hc, wc = max(crop_size, h), max(crop_size, w)
    oy = np.random.randint(0, hc - h + 1)
    ox = np.random.randint(0, wc - w + 1)
    sy = np.random.randint(0, hc - crop_size + 1)
    sx = np.random.randint(0, wc - crop_size + 1)
    canvas = np.zeros((hc, wc, 3), dtype=np.uint8)
    canvas[oy:oy + h, ox:ox + w] = img
    crop = canvas[sy:sy + crop_size, sx:sx + crop_size]
    box = np.array([max(oy - sy, 0), min(crop_size, oy + h - sy),
                    max(ox - sx, 0), min(crop_size, ox + w - sx)], dtype=np.int16)
    return np.ascontiguousarray(crop), box


class TrainAugmentation:
    """The per-sample training augmentation of docs/data.md#loading-rules.

    ``stats``: the encoder's input statistics (the paper's ImageNet constants by default).
    ``coco_flip``: COCO's loader flips the crop a second time during the photometric step. With
    ``mirror_box_on_coco_flip=False`` (the original's behaviour, docs/method.md#quirks) ``img_box`` is
    left as it was; with True it is mirrored with the pixels.
    """

    def __init__(self, crop_size: int, scale_range: Tuple[float, float], coco_flip: bool = False,
                 mirror_box_on_coco_flip: bool = False, stats: InputStats = PAPER_STATS):
        self.crop_size = crop_size
        self.stats = stats
        self.scale_range = scale_range
        self.coco_flip = coco_flip
        self.mirror_box_on_coco_flip = mirror_box_on_coco_flip
        from torchvision import transforms as T   # imported here: evaluation needs none of it
        self.jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
        self.grayscale = T.RandomGrayscale(p=0.2)

    def __call__(self, img: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """``img`` RGB uint8 ``(H, W, 3)`` -> (image float32 ``(3, crop, crop)``, img_box int16 (4,))."""
        pil = random_hflip(random_rescale(Image.fromarray(img), self.scale_range))
        crop, box = random_pad_crop(np.asarray(pil), self.crop_size)
        pil = Image.fromarray(crop)
        if self.coco_flip and np.random.rand() < 0.5:
            pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
            if self.mirror_box_on_coco_flip:
                box = np.array([box[0], box[1], self.crop_size - box[3], self.crop_size - box[2]],
                               dtype=np.int16)
        pil = self.grayscale(self.jitter(pil))
        pil = pil.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))
        return self.stats.normalize(np.asarray(pil)), torch.from_numpy(box)
