"""Losses of DuPL: classification (docs/method.md#losses-and-phases), patch-token contrast (docs/method.md#patch-token-contrast), class-balanced
segmentation (docs/method.md#cross-supervision), discrepancy between the two students (docs/method.md#discrepancy-loss) and the consistency
regularisation on discarded pixels (docs/method.md#consistency).

Every loss returns a 0-dim tensor and none synchronises with the host: counts stay tensors,
empty selections are handled arithmetically.
"""
import torch
import torch.nn.functional as F

from utils.labels import IGNORE_INDEX

from .settings import paper


def cls_loss(logits: torch.Tensor, cls_label: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss: ``logits (B, K)``, ``cls_label (B, K)`` in {0, 1} -> scalar
    (binary cross-entropy with logits, mean over the K classes, then over the batch)."""
    return F.multilabel_soft_margin_loss(logits, cls_label.to(logits.dtype))


def ptc_loss(fmap: torch.Tensor, aff_mask: torch.Tensor) -> torch.Tensor:
    """Patch-token contrast loss: pull same-label tokens together, push different ones apart.

    ``fmap (B, D, h, w)``, ``aff_mask (B, hw, hw)`` (1 same label, 0 different, anything else
    ignored) -> scalar ``0.5 (1 - sum_pos S / (N_pos + 1)) + 0.5 sum_neg S / (N_neg + 1)`` with
    ``S = |cos|`` of the L2-normalised (eps 1e-8) token vectors; sums and counts pooled over
    the batch.
    """
    tokens = F.normalize(fmap.flatten(2), p=2, dim=1, eps=1e-8)
    sim = torch.matmul(tokens.transpose(1, 2), tokens).abs()
    pos = aff_mask == 1
    neg = aff_mask == 0
    pos_term = 1 - (sim * pos).sum() / (pos.sum() + 1)
    neg_term = (sim * neg).sum() / (neg.sum() + 1)
    return 0.5 * pos_term + 0.5 * neg_term


def balanced_seg_loss(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Class-balanced cross-entropy: mean over background pixels and mean over foreground
    pixels, averaged.

    ``logits (B, C, H, W)``, ``label (B, H, W)`` with 0 background, 1..C-1 foreground,
    ``ignore_index`` ignored -> scalar ``(sum_bg CE / (N_bg + 1e-6) + sum_fg CE / (N_fg + 1e-6)) / 2``,
    pooled over the batch (an empty group contributes 0).
    """
    label = label.long()
    ignored = label == ignore_index
    ce = F.cross_entropy(logits, label.masked_fill(ignored, 0), reduction="none")
    bg = label == 0
    fg = ~bg & ~ignored
    bg_loss = (ce * bg).sum() / (bg.sum() + 1e-6)
    fg_loss = (ce * fg).sum() / (fg.sum() + 1e-6)
    return 0.5 * (bg_loss + fg_loss)


def discrepancy_loss(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Discrepancy loss pushing each student's features away from the frozen other's.

    ``f1, f2 (B, D, h, w)`` -> scalar ``[1 + mean cos(sg(f1), f2)] + [1 + mean cos(sg(f2), f1)]``
    in [0, 4]; the cosine is taken per channel over the ``hw`` spatial positions (eps 1e-6),
    averaged over B and D; ``sg`` is stop-gradient, so each term only moves one student.
    """
    a, b = f1.flatten(2), f2.flatten(2)
    term1 = 1 + F.cosine_similarity(a.detach(), b, dim=2, eps=1e-6).mean()
    term2 = 1 + F.cosine_similarity(b.detach(), a, dim=2, eps=1e-6).mean()
    return term1 + term2


def consistency_loss(logits: torch.Tensor, aug_logits: torch.Tensor, other_label: torch.Tensor,
                     conf_thre: float = paper("conf_thre"), ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Consistency regularisation of one student on the pixels its peer leaves unsupervised.

    ``logits (B, C, H, W)`` of the clean view (detached here), ``aug_logits (B, C, H, W)`` of the
    strong view (already flipped back and resized), ``other_label (B, H, W)`` the other
    student's filtered pseudo label -> scalar. Targets are the argmax of the clean logits; the
    mask keeps pixels where ``other_label == ignore_index`` and the clean max softmax exceeds
    ``conf_thre``; the loss is the CE of ``aug_logits`` averaged over the mask, 0 if it is empty.
    """
    with torch.no_grad():
        conf, target = logits.detach().softmax(dim=1).max(dim=1)
        mask = (other_label == ignore_index) & (conf > conf_thre)
    ce = F.cross_entropy(aug_logits, target, reduction="none")
    return (ce * mask).sum() / mask.sum().clamp(min=1)
