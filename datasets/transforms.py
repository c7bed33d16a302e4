"""Training-time augmentation of one sample (docs/data.md#loading-rules).

Random rescale (0.5-2.0, PIL bilinear) -> horizontal flip -> pad with black and crop to
``crop_size`` (``img_box`` marks the real pixels) -> colour jitter (p 0.8), grayscale (p 0.2),
Gaussian blur (always) -> normalise with the ImageNet mean and std.

Geometry is drawn from numpy's global RNG and the photometric part from torch's, both of which
the data loader seeds per worker; the main process is seeded per rank by the training script.
"""
from typing import Tuple

import numpy as np
import torch
from PIL import Image, ImageFilter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN_255 = (123.675, 116.28, 103.53)  # the same constants in 0-255 units
_STD_255 = (58.395, 57.12, 57.375)


def random_rescale(img: Image.Image, scale_range=(0.5, 2.0)) -> Image.Image:
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


def normalize(img: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` normalised with the ImageNet mean and std."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Normalised batch ``(B, 3, H, W)`` back to RGB in [0, 1], quantised like a uint8 image.

    ``x * std + mean`` per channel with the ImageNet constants in 0-255 units, truncated towards
    zero and wrapped into 0..255 as the original's cast to uint8 does on CPU (values outside
    0..255 wrap modulo 256), then divided by 255 (docs/method.md#par); bit-exact on CPU and CUDA.
    Truncation means a normalised uint8 image does not always come back exactly: a value landing
    a hair below its integer drops one level (about 4% of the 256 levels per channel), as in the
    original. The constants are Python scalars (no host-to-device copy, no synchronisation).
    ``x (B, 3, H, W)`` -> ``(B, 3, H, W)`` in ``x``'s dtype.
    """
    channels = [x[:, c] * s + m for c, (m, s) in enumerate(zip(_MEAN_255, _STD_255))]
    pixels = torch.remainder(torch.trunc(torch.stack(channels, dim=1)), 256)
    # divide by a device tensor: CUDA divides by a Python scalar through its reciprocal (1 ulp off)
    return pixels / torch.full((1, 1, 1, 1), 255.0, dtype=x.dtype, device=x.device)


class TrainAugmentation:
    """The per-sample training augmentation of docs/data.md#loading-rules.

    ``coco_flip``: COCO's loader flips the crop a second time during the photometric step. With
    ``mirror_box_on_coco_flip=False`` (the original's behaviour, docs/method.md#quirks) ``img_box`` is
    left as it was; with True it is mirrored with the pixels.
    """

    def __init__(self, crop_size: int = 448, scale_range=(0.5, 2.0), coco_flip: bool = False,
                 mirror_box_on_coco_flip: bool = False):
        self.crop_size = crop_size
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
        return normalize(np.asarray(pil)), torch.from_numpy(box)
