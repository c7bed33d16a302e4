"""The input statistics every image is normalised with (:class:`InputStats`): the one place
that normalises and de-normalises, for the training transform, evaluation, PAR's image and the
strong view (docs/method.md#backbones)."""
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

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
