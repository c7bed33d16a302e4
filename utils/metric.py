"""Segmentation metric: a confusion matrix accumulated on the tensors' device (docs/method.md#evaluation).

Rows are ground truth, columns predictions. Pixels whose ground truth is outside ``[0, C)``
(255 = ignore) are skipped. A prediction outside ``[0, C)`` counts as a miss of its GT class
(an extra column), so it can never corrupt another class's counts.
"""
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from .distributed import all_reduce_sum


def scored_pixels(gt: torch.Tensor, pred: torch.Tensor, num_classes: int, *more: torch.Tensor):
    """The pixels a confusion matrix counts: those whose ground truth is in ``[0, C)``, with a
    prediction outside ``[0, C)`` turned into ``C`` (a miss of its GT class); ``more`` (flat, of the
    same length) are filtered alike. Returns ``(gt, pred, *more)``."""
    keep = (gt >= 0) & (gt < num_classes)
    gt, pred = gt[keep], pred[keep]
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, torch.full_like(pred, num_classes))
    return (gt, pred, *(m[keep] for m in more))


class ConfusionMatrix:
    """Accumulate ``update(gt, pred)`` over many images, ``reduce_from_all_processes()`` across
    ranks, then ``compute()`` the scores. Memory is ``C x (C+1)`` whatever the number of images."""

    def __init__(self, num_classes: int, device: Optional[torch.device] = None):
        self.num_classes = num_classes
        self.mat = torch.zeros((num_classes, num_classes + 1), dtype=torch.int64, device=device)

    def update(self, gt, pred) -> None:
        """Add one or more images. ``gt`` and ``pred``: integer arrays/tensors of equal shape."""
        gt = torch.as_tensor(gt, device=self.mat.device).reshape(-1).long()
        pred = torch.as_tensor(pred, device=self.mat.device).reshape(-1).long()
        if gt.shape != pred.shape:
            raise ValueError(f"gt has {gt.numel()} pixels but pred has {pred.numel()}")
        c = self.num_classes
        gt, pred = scored_pixels(gt, pred, c)
        self.mat += torch.bincount(gt * (c + 1) + pred, minlength=c * (c + 1)).view(c, c + 1)

    def add_counts(self, counts) -> None:
        """Add confusion counts computed elsewhere (a CRF worker's, say): an integer array or tensor
        ``(C, C)`` of ground truth x prediction, or ``(C, C+1)`` with the column of predictions
        outside ``[0, C)``. The same as :meth:`update` with the pixels behind the counts."""
        counts = torch.as_tensor(counts)
        c = self.num_classes
        if counts.ndim != 2 or counts.shape[0] != c or counts.shape[1] not in (c, c + 1):
            raise ValueError(f"counts must be ({c}, {c}) or ({c}, {c + 1}), got {tuple(counts.shape)}")
        if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
            raise ValueError(f"counts must be integers, got {counts.dtype}")
        self.mat[:, :counts.shape[1]] += counts.to(self.mat.device)

    def reset(self) -> None:
        self.mat.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all ranks in place (a no-op without a process group)."""
        all_reduce_sum(self.mat)

    def compute(self) -> Dict[str, object]:
        """Scores as the original defines them.

        ``iou``: per-class IoU (C,), NaN where a class has neither GT nor prediction;
        ``miou``: nan-mean of IoU over classes present in the ground truth;
        ``pAcc``: pixel accuracy; ``mAcc``: nan-mean of per-class recall.
        """
        m = self.mat.double().cpu().numpy()
        c = self.num_classes
        tp = np.diag(m[:, :c])
        gt_count = m.sum(axis=1)
        pred_count = m[:, :c].sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (gt_count + pred_count - tp)
            recall = tp / gt_count
            pacc = tp.sum() / m.sum()
        present = gt_count > 0
        return {
            "iou": iou,
            "miou": float(np.nanmean(iou[present])) if present.any() else float("nan"),
            "pAcc": float(pacc),
            "mAcc": float(np.nanmean(recall)) if present.any() else float("nan"),
            "present": present,
        }


class ThresholdSweep:
    """Confusion matrices of one labelling rule at many background thresholds, from one pass over
    the pixels: a pixel is labelled ``cls`` where its ``score`` is above the threshold, else
    background (0) -- ``torch.where(score > t, cls, 0)`` for every ``t`` of ``thresholds``.

    Each pixel is counted once, in the bin of how many (float32) thresholds lie strictly below its
    score; the matrix of threshold ``t`` follows by summing the bins (:meth:`matrices`). The counts
    equal :class:`ConfusionMatrix` updates with the labels of each threshold. Memory is
    ``C x (C+1) x (T+1)`` integers whatever the number of images."""

    def __init__(self, num_classes: int, thresholds: Sequence[float], device: Optional[torch.device] = None):
        self.num_classes = num_classes
        t = torch.as_tensor(list(thresholds), dtype=torch.float32)
        self.sorted, order = torch.sort(t)
        self.position = torch.empty_like(order)
        self.position[order] = torch.arange(len(order))        # threshold j is sorted[position[j]]
        self.sorted = self.sorted.to(device)
        self.counts = torch.zeros((num_classes, num_classes + 1, len(order) + 1), dtype=torch.int64,
                                  device=device)

    def update(self, gt, score: torch.Tensor, cls: torch.Tensor) -> None:
        """Add one image: ``gt``, ``score`` (float32) and ``cls`` (the class given where the score
        passes) of equal shape. Ground truth outside ``[0, C)`` is skipped; a NaN score never passes."""
        c, n = self.num_classes, self.counts.shape[-1]
        gt = torch.as_tensor(gt, device=self.counts.device).reshape(-1).long()
        score = score.reshape(-1).float()
        cls = cls.reshape(-1).long()
        if not gt.shape == score.shape == cls.shape:
            raise ValueError(f"gt, score and cls must have as many pixels: {gt.numel()}, {score.numel()}, "
                             f"{cls.numel()}")
        gt, cls, score = scored_pixels(gt, cls, c, score)
        below = torch.searchsorted(self.sorted, score.contiguous())     # thresholds strictly below
        below = torch.where(torch.isnan(score), torch.zeros_like(below), below)
        key = (gt * (c + 1) + cls) * n + below
        self.counts += torch.bincount(key, minlength=c * (c + 1) * n).view(c, c + 1, n)

    def reduce_from_all_processes(self) -> None:
        """Sum the counts of all ranks in place (a no-op without a process group)."""
        all_reduce_sum(self.counts)

    def matrices(self) -> list:
        """One :class:`ConfusionMatrix` per threshold, in the order given."""
        c = self.num_classes
        cum = self.counts.cumsum(dim=-1)
        out = []
        for p in self.position.tolist():
            background = cum[..., p]                        # scores at or below the threshold
            mat = cum[..., -1] - background                 # above: labelled with their class
            mat[:, 0] += background.sum(dim=1)
            cm = ConfusionMatrix(c, self.counts.device)
            cm.add_counts(mat)
            out.append(cm)
        return out


def format_table(columns: Mapping[str, np.ndarray], class_names: Sequence[str],
                 present: Optional[np.ndarray] = None) -> str:
    """A per-class IoU table (x100, 3 decimals): one column per name in ``columns``, one row per
    class present in the ground truth (``present``; all classes when None), then the mIoU over
    those classes and, when some are absent, a line saying how many are not listed (their IoU is
    undefined and left out of the mean; ``results.json`` keeps every class)."""
    names = list(columns)
    width = max(len("Class"), *(len(n) for n in class_names)) + 2
    colw = max(9, *(len(n) + 2 for n in names))
    num = len(class_names)
    present = np.ones(num, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    lines = ["Class".ljust(width) + "".join(n.rjust(colw) for n in names)]
    for i, cname in enumerate(class_names):
        if not present[i]:
            continue
        cells = []
        for n in names:
            v = columns[n][i]
            cells.append(("-" if np.isnan(v) else f"{100 * v:.3f}").rjust(colw))
        lines.append(cname.ljust(width) + "".join(cells))
    means = []
    for n in names:
        vals = np.asarray(columns[n], dtype=np.float64)[present]
        means.append((f"{100 * np.nanmean(vals):.3f}" if vals.size else "-").rjust(colw))
    lines.append("mIoU".ljust(width) + "".join(means))
    absent = int(num - present.sum())
    if absent:
        lines.append(f"({absent} of {num} classes have no ground truth in this split and are not listed)")
    return "\n".join(lines)
