"""Strong view of the consistency branch (docs/method.md#losses-and-phases), batched on the tensors' device.

Per image: RandAugment with ``num_ops`` operations drawn with replacement from seven photometric
ops at one fixed magnitude, then normalisation with the encoder's input statistics (the ImageNet
constants on the paper's path), then a horizontal flip. The original
round-trips every image through PIL on the CPU; here the ops work on the whole batch in 8-bit
value space (floats holding the integers 0..255) and reproduce PIL's integer arithmetic -- its
lookup tables, the fixed-point RGB -> L conversion, ``Image.blend``'s single-precision
interpolation with truncation, and the rounded 3x3 SMOOTH filter that leaves the border as is --
so the result equals PIL's up to float rounding of the final normalisation.

Magnitude ``m`` (0..30) maps to ``v = m / 30 * (max - min) + min`` per op (docs/method.md#losses-and-phases); at
``m = 10``: Posterize keeps 2 bits, Color / Contrast / Brightness / Sharpness use factor 0.7.
AutoContrast and Equalize take no magnitude. No op moves pixels, so apart from the explicit flip
the strong view is pixel-aligned with its input.

The op draws come from a CPU ``torch.Generator`` (no device synchronisation); at each of the
``num_ops`` positions the images are grouped by the op they drew, so every op runs at most once per
position on the subset of the batch that drew it.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from utils.input_stats import PAPER_STATS, InputStats

OP_NAMES: Tuple[str, ...] = ("AutoContrast", "Equalize", "Posterize", "Color", "Contrast",
                             "Brightness", "Sharpness")


def op_values(magnitude: float = 10) -> Tuple[int, float]:
    """Magnitude -> (Posterize bits, enhancement factor): ``int(m/30 * 6)`` and
    ``m/30 * 1.8 + 0.1`` (range 0..6 bits and 0.1..1.9). ``m = 10`` gives ``(2, 0.7)``."""
    bits = int(magnitude / 30 * 6)
    factor = magnitude / 30 * 1.8 + 0.1
    if not 1 <= bits <= 8:
        raise ValueError(f"magnitude {magnitude} gives {bits} posterize bits; PIL needs 1..8")
    return bits, factor


# ----------------------------------------------------------------------------------------------
# Batched ops on (b, 3, H, W) float32 tensors holding integer values 0..255.

def _blend(degenerate: Tensor, image: Tensor, factor: float) -> Tensor:
    """PIL ``Image.blend(degenerate, image, factor)``: ``in1 + factor * (in2 - in1)`` in single
    precision, truncated to an integer, clipped to 0..255."""
    out = degenerate + (image - degenerate) * factor
    return torch.trunc(out).clamp_(0, 255)


def _grayscale(v: Tensor) -> Tensor:
    """PIL RGB -> L, ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16`` (exact in float32); the
    result is ``(b, 1, H, W)``."""
    s = v[:, 0:1] * 19595 + v[:, 1:2] * 38470 + v[:, 2:3] * 7471 + 32768
    return torch.floor(s / 65536)


def autocontrast(v: Tensor) -> Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0): per channel, ``int(x * s + o)`` with
    ``s = 255 / (hi - lo)``, ``o = -lo * s`` in double precision; identity when ``hi <= lo``."""
    lo = v.amin(dim=(2, 3), keepdim=True).double()
    hi = v.amax(dim=(2, 3), keepdim=True).double()
    spread = hi > lo
    # a true division (``255.0 / tensor`` would multiply by a rounded reciprocal)
    scale = torch.full_like(hi, 255.0) / torch.where(spread, hi - lo, torch.ones_like(hi))
    offset = -lo * scale
    out = torch.trunc(v.double() * scale + offset).clamp_(0, 255).to(v.dtype)
    return torch.where(spread, out, v)


def equalize(v: Tensor) -> Tensor:
    """PIL ``ImageOps.equalize``: per channel, ``lut[i] = (step // 2 + #{x < i}) // step`` with
    ``step = (N - count of the highest present value) // 255``; identity when a channel holds a
    single value or ``step`` is 0."""
    b, c, h, w = v.shape
    idx = v.reshape(b * c, h * w).long()
    hist = torch.zeros((b * c, 256), dtype=torch.long, device=v.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx))
    present = hist > 0
    levels = torch.arange(256, device=v.device).expand(b * c, 256)
    last = torch.where(present, levels, torch.full_like(levels, -1)).amax(1, keepdim=True)
    h_last = hist.gather(1, last.clamp(min=0))
    step = (h * w - h_last) // 255
    below = torch.cumsum(hist, 1) - hist
    lut = torch.div(step // 2 + below, step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    use = (present.sum(1, keepdim=True) > 1) & (step > 0)
    lut = torch.where(use, lut, levels)
    return lut.gather(1, idx).to(v.dtype).view(b, c, h, w)


def posterize(v: Tensor, bits: int) -> Tensor:
    """PIL ``ImageOps.posterize``: keep the ``bits`` high bits of every value."""
    q = float(2 ** (8 - bits))
    return torch.floor(v / q) * q


def color(v: Tensor, factor: float) -> Tensor:
    """PIL ``ImageEnhance.Color``: blend from the grayscale (L) image towards the image."""
    return _blend(_grayscale(v).expand_as(v), v, factor)


def contrast(v: Tensor, factor: float) -> Tensor:
    """PIL ``ImageEnhance.Contrast``: blend from a constant image at the rounded mean of the
    grayscale (L) image towards the image."""
    gray = _grayscale(v)
    total = gray.double().sum(dim=(1, 2, 3), keepdim=True)
    # tensor / tensor: a true division like Python's (a scalar divisor may become a reciprocal)
    mean = total / torch.full_like(total, gray.shape[2] * gray.shape[3])
    mean = torch.floor(mean + 0.5).to(v.dtype)
    return _blend(mean.expand_as(v), v, factor)


def brightness(v: Tensor, factor: float) -> Tensor:
    """PIL ``ImageEnhance.Brightness``: blend from black towards the image."""
    return _blend(torch.zeros_like(v), v, factor)


def smooth(v: Tensor) -> Tensor:
    """PIL ``ImageFilter.SMOOTH`` (3x3 kernel ``[[1,1,1],[1,5,1],[1,1,1]] / 13``, rounded); the
    one-pixel border is copied unchanged. Sums of shifted slices keep it exact on every device
    (a convolution could run in reduced precision, e.g. TF32)."""
    h, w = v.shape[-2:]
    if h < 3 or w < 3:
        return v.clone()
    s = 4 * v[..., 1:h - 1, 1:w - 1]
    for dy in range(3):
        for dx in range(3):
            s = s + v[..., dy:h - 2 + dy, dx:w - 2 + dx]
    out = v.clone()
    out[..., 1:h - 1, 1:w - 1] = torch.floor(s / 13 + 0.5)
    return out


def sharpness(v: Tensor, factor: float) -> Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend from the SMOOTH-filtered image towards the image."""
    return _blend(smooth(v), v, factor)


def _batched_ops(magnitude: float) -> Dict[str, Callable[[Tensor], Tensor]]:
    bits, factor = op_values(magnitude)
    return {
        "AutoContrast": autocontrast,
        "Equalize": equalize,
        "Posterize": lambda v: posterize(v, bits),
        "Color": lambda v: color(v, factor),
        "Contrast": lambda v: contrast(v, factor),
        "Brightness": lambda v: brightness(v, factor),
        "Sharpness": lambda v: sharpness(v, factor),
    }


# ----------------------------------------------------------------------------------------------

def draw_ops(batch_size: int, generator: Optional[torch.Generator] = None, num_ops: int = 5
             ) -> List[List[str]]:
    """RandAugment's op choice: for each image, ``num_ops`` names drawn uniformly with replacement
    from :data:`OP_NAMES`, from a CPU generator (the global CPU RNG when ``generator`` is None)."""
    draws = torch.randint(len(OP_NAMES), (batch_size, num_ops), generator=generator)
    return [[OP_NAMES[i] for i in row] for row in draws.tolist()]


def normalize_and_flip(v: Tensor, stats: InputStats = PAPER_STATS) -> Tensor:
    """8-bit values ``(B, 3, H, W)`` -> ``v / 255``, ``stats``' mean/std per channel
    (:meth:`~datasets.transforms.InputStats.normalize_levels`), horizontal flip."""
    return stats.normalize_levels(v).flip(-1)


def strong_augment(images: Tensor, generator: Optional[torch.Generator] = None,
                   num_ops: int = 5, magnitude: float = 10,
                   ops: Optional[Sequence[Sequence[str]]] = None, return_ops: bool = False,
                   stats: InputStats = PAPER_STATS) -> Union[Tensor, Tuple[Tensor, List[List[str]]]]:
    """Strongly augmented view of a batch: per image RandAugment(n = ``num_ops``, m =
    ``magnitude``) over AutoContrast, Equalize, Posterize, Color, Contrast, Brightness, Sharpness
    with PIL semantics, then normalisation with ``stats`` (the encoder's; the ImageNet constants by
    default), then a horizontal flip (docs/method.md#losses-and-phases).

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1], uint8-quantised (the de-normalised training
            batch), on any device.
        generator: CPU generator for the op draws.
        ops: optional explicit ops, one list of names per image (overrides the draw).
        return_ops: also return the ops each image got.
        stats: the input statistics of the encoder the view is for.

    Returns:
        ``(B, 3, H, W)`` float32 normalised and flipped, on ``images``' device; with
        ``return_ops`` also the list of op-name lists.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    b = images.shape[0]
    if ops is None:
        ops = draw_ops(b, generator, num_ops)
    else:
        ops = [list(row) for row in ops]
        if len(ops) != b:
            raise ValueError(f"{len(ops)} op lists for {b} images")
        for row in ops:
            for name in row:
                if name not in OP_NAMES:
                    raise ValueError(f"unknown op {name!r}; choose from {OP_NAMES}")
    table = _batched_ops(magnitude)
    v = torch.round(images.detach().float() * 255).clamp_(0, 255)
    for pos in range(max((len(row) for row in ops), default=0)):
        groups: Dict[str, List[int]] = {}
        for i, row in enumerate(ops):
            if pos < len(row):
                groups.setdefault(row[pos], []).append(i)
        pieces: List[Tensor] = [v[i:i + 1] for i in range(b)]
        for name, members in groups.items():
            sub = v if len(members) == b else torch.cat([v[i:i + 1] for i in members])
            out = table[name](sub)
            for k, i in enumerate(members):
                pieces[i] = out[k:k + 1]
        v = torch.cat(pieces) if b > 1 else pieces[0]
    out = normalize_and_flip(v, stats)
    return (out, ops) if return_ops else out


def strong_augment_pil(image: Tensor, ops: Sequence[str], magnitude: float = 10,
                       stats: InputStats = PAPER_STATS) -> Tensor:
    """Reference of :func:`strong_augment` for one image, through PIL as the original:
    ``(3, H, W)`` in [0, 1] -> uint8 PIL image -> the named ops (``ImageOps`` /
    ``ImageEnhance``) -> tensor / 255 -> normalisation with ``stats`` -> horizontal flip,
    ``(3, H, W)`` float32 on the CPU."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageOps

    bits, factor = op_values(magnitude)
    pil_ops = {
        "AutoContrast": ImageOps.autocontrast,
        "Equalize": ImageOps.equalize,
        "Posterize": lambda im: ImageOps.posterize(im, bits),
        "Color": lambda im: ImageEnhance.Color(im).enhance(factor),
        "Contrast": lambda im: ImageEnhance.Contrast(im).enhance(factor),
        "Brightness": lambda im: ImageEnhance.Brightness(im).enhance(factor),
        "Sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(factor),
    }
    arr = torch.round(image.detach().float().cpu() * 255).clamp(0, 255).to(torch.uint8)
    im = Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy())
    for name in ops:
        im = pil_ops[name](im)
    return stats.normalize(np.asarray(im)).flip(-1)
