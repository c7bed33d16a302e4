"""The progressive high threshold of the pseudo labels (docs/method.md#thresholds): a per-class
threshold that descends along a half cosine, and the per-image threshold taken from it. Where the
descent starts and how long it lasts is :mod:`model.schedule`."""
import math
from typing import Union

import torch

Value = Union[float, torch.Tensor]


def cosine_descent(step: float, num_steps: int, start: Value, target: Value) -> Value:
    """Threshold that descends along a half cosine from ``start`` to ``target``.

    ``start`` before step 0, ``target`` from ``num_steps`` on, in between
    ``start + (target - start) * (1 - cos(pi * step / (num_steps - 1))) / 2`` (so ``target`` is
    already reached at ``num_steps - 1``). ``start``/``target`` are floats or per-class tensors
    ``(K,)``; the result is a tensor of their broadcast shape when either is a tensor.
    """
    if step < 0:
        out = start
    elif step >= num_steps or num_steps <= 1:   # a one-step descent is at its target at once
        out = target
    else:
        weight = (1 - math.cos(math.pi * step / (num_steps - 1))) / 2
        out = start + (target - start) * weight
    if torch.is_tensor(start) or torch.is_tensor(target):
        ref = start if torch.is_tensor(start) else target
        shape = torch.broadcast_shapes(torch.as_tensor(start).shape, torch.as_tensor(target).shape)
        out = torch.as_tensor(out, dtype=ref.dtype, device=ref.device).expand(shape).clone()
    return out


def image_thresholds(class_thresholds: torch.Tensor, cls_label: torch.Tensor) -> torch.Tensor:
    """Per-image high threshold: the maximum class threshold over the classes present.

    ``class_thresholds (K,)``, ``cls_label (B, K)`` -> ``(B,)``. An image with no present class
    (never the case in training data) gets the maximum over all classes.
    """
    thr = class_thresholds.to(device=cls_label.device)
    present = cls_label > 0
    masked = torch.where(present, thr, float("-inf"))
    return torch.where(present.any(dim=1), masked.amax(dim=1), thr.amax())
