"""Training-time augmentation of one sample (docs/data.md#loading-rules), and the input statistics
every image is normalised with (:class:`InputStats`).

Random rescale (0.5-2.0, PIL bilinear) -> horizontal flip -> pad with black and crop to
``crop_size`` (``img_box`` marks the real pixels) -> colour jitter (p 0.8), grayscale (p 0.2),
Gaussian blur (always) -> normalise with the encoder's mean and std (the ImageNet constants on the
paper's ViT/DeiT path).

Geometry is drawn from numpy's global RNG and the photometric part from torch's, both of which
the data loader seeds per worker; the main process is seeded per rank by the training script.
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFilter

from utils.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _in_255(values: Sequence[float]) -> Tuple[float, ...]:
    """Statistics in 0-255 units as decimals: ``0.485 -> 123.675`` (the literal, not
    ``0.485 * 255 = 123.67499999999998``); exact for values of up to 8 decimals."""
    return tuple(round(v * 255, 10) for v in values)


@dataclass(frozen=True)
class InputStats:
    """The per-channel RGB mean and std (0-1 units) an encoder's inputs are normalised with, and
    the one place that normalises and de-normalises (docs/method.md#backbones).

    The forms below are kept apart because their float rounding differs: each reproduces, for the
    ImageNet constants, the arithmetic of the site that used it, bit for bit.

    ``uint8_cast``: :meth:`denormalize` truncates and wraps like the original's cast to uint8 (the
    paper's ViT/DeiT path); otherwise it rounds to the nearest 8-bit level, so a normalised 8-bit
    image comes back exactly.
    """
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    uint8_cast: bool = False

    def __post_init__(self):
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) \
                or min(std) <= 0:
            raise UserError(f"input statistics need 3 finite means and 3 positive stds (R,G,B), got "
                            f"mean {list(mean)} and std {list(std)}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def normalize(self, img: np.ndarray) -> torch.Tensor:
        """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)``: ``x / 255``, then ``(x - mean) / std``
        (the training transform, inference, the visualiser, PIL's strong view)."""
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def normalize_pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)``: ``(x - 255 mean) / (255 std)`` with the
        statistics scaled in float32 (evaluation images)."""
        mean = torch.tensor(self.mean).view(3, 1, 1) * 255.0
        std = torch.tensor(self.std).view(3, 1, 1) * 255.0
        return (torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std

    def normalize_levels(self, v: torch.Tensor) -> torch.Tensor:
        """8-bit values ``(B, 3, H, W)`` (floats holding 0..255, any device) -> ``v / 255``, then
        ``(x - mean) / std`` per channel with Python scalars (the strong view)."""
        x = v / 255
        return torch.stack([(x[:, c] - self.mean[c]) / self.std[c] for c in range(3)], dim=1)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch ``(B, 3, H, W)`` back to RGB in [0, 1], quantised like a uint8 image:
        PAR's image and the strong view's input (docs/method.md#par).

        ``x * std + mean`` per channel in 0-255 units, then to an integer level and divided by 255.
        With ``uint8_cast`` (the paper's path) the level is truncated towards zero and wrapped into
        0..255 as the original's cast to uint8 does on CPU (values outside 0..255 wrap modulo 256);
        truncation means a normalised uint8 image does not always come back exactly: a value
        landing a hair below its integer drops one level (about 4% of the 256 levels per channel),
        as in the original. Otherwise it is rounded and clamped to 0..255, so an 8-bit image comes
        back exactly whatever the statistics. Bit-exact on CPU and CUDA; the constants are Python
        scalars (no host-to-device copy, no synchronisation). ``x``'s dtype is kept.
        """
        scaled = torch.stack([x[:, c] * s + m for c, (m, s) in
                              enumerate(zip(_in_255(self.mean), _in_255(self.std)))], dim=1)
        if self.uint8_cast:
            pixels = torch.remainder(torch.trunc(scaled), 256)
        else:
            pixels = torch.round(scaled).clamp_(0, 255)
        # divide by a device tensor: CUDA divides by a Python scalar through its reciprocal (1 ulp off)
        return pixels / torch.full((1, 1, 1, 1), 255.0, dtype=x.dtype, device=x.device)


# the original's statistics, which the paper's ViT/DeiT path keeps (docs/method.md#backbones)
PAPER_STATS = InputStats(IMAGENET_MEAN, IMAGENET_STD, uint8_cast=True)


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


def normalize(img: np.ndarray, stats: InputStats = PAPER_STATS) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` normalised with ``stats`` (the ImageNet
    constants by default): :meth:`InputStats.normalize`."""
    return stats.normalize(img)


def denormalize(x: torch.Tensor, stats: InputStats = PAPER_STATS) -> torch.Tensor:
    """A normalised batch back to an 8-bit image in [0, 1] (the original's round trip by
    default): :meth:`InputStats.denormalize`."""
    return stats.denormalize(x)


class TrainAugmentation:
    """The per-sample training augmentation of docs/data.md#loading-rules.

    ``stats``: the encoder's input statistics (the paper's ImageNet constants by default).
    ``coco_flip``: COCO's loader flips the crop a second time during the photometric step. With
    ``mirror_box_on_coco_flip=False`` (the original's behaviour, docs/method.md#quirks) ``img_box`` is
    left as it was; with True it is mirrored with the pixels.
    """

    def __init__(self, crop_size: int = 448, scale_range=(0.5, 2.0), coco_flip: bool = False,
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
