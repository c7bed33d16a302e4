"""Pixel-adaptive refinement (PAR), docs/method.md#par.

PAR propagates soft class maps along an affinity built from the image: each pixel takes a
weighted average of 48 neighbours (the 8 cells of a 3x3 window around it at dilations
1, 2, 4, 8, 12, 24), weighted by how similar their colour is and how close they are.
"""
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# The 8 neighbours of a 3x3 window, centre excluded: TL, T, TR, L, R, BL, B, BR.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def dilated_neighbours(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Gather the 8 neighbours of every pixel at each dilation, borders padded by replication.

    ``x (B, C, h, w)`` -> ``(B, C, 8 * len(dilations), h, w)``; neighbour ``8 * i + k`` is the
    k-th of TL, T, TR, L, R, BL, B, BR at dilation ``dilations[i]``.
    """
    h, w = x.shape[-2:]
    views = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy, dx in _OFFSETS:
            views.append(padded[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w])
    return torch.stack(views, dim=2)


class PAR(nn.Module):
    """Pixel-adaptive refinement of soft maps by image colour and spatial affinity.

    ``W = softmax_48(colour affinity) + w2 * softmax_48(position affinity)``; the colour affinity
    of a neighbour is ``-(|I_nbr - I| / (std_48(I_nbr) + 1e-8) / w1)^2`` averaged over the three
    channels (unbiased std over the 48 neighbours of that pixel and channel), the position
    affinity ``-(dist / (std_48(dist) + 1e-8) / w1)^2`` with ``dist = d`` for the straight and
    ``d * sqrt(2)`` for the diagonal neighbours. ``W`` sums to ``1 + w2`` (maps grow by about
    1% per iteration; only their argmax is used). Then ``num_iter`` times
    ``P <- sum_48 W * neighbours(P)``.

    No parameters; the position weights are a non-persistent buffer, so the module follows
    ``.to(device)``; it also works on inputs of any device without it (no device strings).
    """

    def __init__(self, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), num_iter: int = 10,
                 w1: float = 0.3, w2: float = 0.01):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.num_iter = num_iter
        self.w1 = w1
        self.w2 = w2
        dist = torch.tensor([d * (math.sqrt(2.0) if (dy and dx) else 1.0)
                             for d in self.dilations for dy, dx in _OFFSETS], dtype=torch.float32)
        pos_aff = -(dist / (dist.std() + 1e-8) / w1) ** 2
        self.register_buffer("pos_weight", w2 * pos_aff.softmax(dim=0), persistent=False)
        self._converted = {}

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """Neighbour weights of every pixel: ``image (B, 3, h, w)`` -> ``(B, 1, 48, h, w)``."""
        nbr = dilated_neighbours(image, self.dilations)
        std = nbr.std(dim=2, keepdim=True)
        aff = -((nbr - image.unsqueeze(2)).abs() / (std + 1e-8) / self.w1) ** 2
        aff = aff.mean(dim=1, keepdim=True).softmax(dim=2)
        return aff + self._position_weight(image).view(1, 1, -1, 1, 1)

    def _position_weight(self, like: torch.Tensor) -> torch.Tensor:
        """``pos_weight`` on ``like``'s device and dtype; converted copies are cached so a
        module left on the CPU copies its 48 weights to another device once, not every call."""
        pos = self.pos_weight
        if pos.device == like.device and pos.dtype == like.dtype:
            return pos
        key = (like.device, like.dtype)
        if key not in self._converted:
            self._converted[key] = pos.to(device=like.device, dtype=like.dtype)
        return self._converted[key]

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Refine ``masks (B, m, h', w')`` on ``image (B, 3, h, w)`` -> ``(B, m, h, w)``.

        The masks are first resized to the image size (bilinear, ``align_corners=True``).
        The affinity is computed once per image and shared by all ``m`` channels, so several
        stacks of maps of the same image (e.g. two background thresholds) can be refined in
        one call by concatenating them along the channel dimension.
        """
        if masks.shape[-2:] != image.shape[-2:]:
            masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear",
                                  align_corners=True)
        weight = self.affinity(image)
        for _ in range(self.num_iter):
            masks = self._propagate(masks, weight)
        return masks

    def _propagate(self, masks: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """One step ``sum_48 W * neighbours(masks)``, accumulated neighbour by neighbour so the
        ``(B, m, 48, h, w)`` stack is never built (faster on the CPU, the same sums up to float
        rounding)."""
        h, w = masks.shape[-2:]
        out, j = None, 0
        for d in self.dilations:
            padded = F.pad(masks, (d, d, d, d), mode="replicate")
            for dy, dx in _OFFSETS:
                term = padded[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w] * weight[:, :, j]
                out = term if out is None else out.add_(term)
                j += 1
        return out
