"""Multi-scale segmentation inference of a trained DuPL network (SPEC §6.1, §6.2).

VOC rule: at each scale the image is resized to ``floor(s H) x floor(s W)``, ``[x ; flip(x)]``
goes through a student, both logits are upsampled to ``H x W`` and summed (the flipped one
flipped back); scales are merged by element-wise max.
COCO rule: the image is first resized to 448 x 448; each scale's logits are resized to the
448-pixel token grid (28 x 28) and summed with the flipped ones; scales are summed; the result is
upsampled to the mask size by the caller.
Which student's prediction is used is a fixed choice (``branch`` 1, 2 or ``ensemble`` = mean of
both students' softmax), never one made by looking at ground truth.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F

from model.checkpoint import load_network
from model.network import DualStudentNet

VOC_EVAL_SCALES = (1.0, 1.5, 1.25)
COCO_EVAL_SCALES = (1.0, 1.25, 1.5)
BRANCHES = ("1", "2", "ensemble")


def load_model(model_path: str, backbone: str, num_classes: int, aux_layer: int,
               device: torch.device) -> DualStudentNet:
    """A :class:`DualStudentNet` with the weights of ``model_path`` (this project's or the
    original's checkpoint), in eval mode on ``device``. No download."""
    net = DualStudentNet(backbone, num_classes, aux_layer, pretrained=False)
    load_network(net, model_path)
    return net.to(device).eval()


def _flip_pass(student, x: torch.Tensor, size) -> torch.Tensor:
    """Seg logits of ``x (1, 3, h, w)`` and its mirror, resized to ``size`` and summed."""
    seg = student.segment(torch.cat([x, x.flip(-1)], dim=0)).float()
    seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
    return seg[:1] + seg[1:].flip(-1)


@torch.no_grad()
def voc_msc_logits(net: DualStudentNet, image: torch.Tensor,
                   scales: Sequence[float] = VOC_EVAL_SCALES) -> List[torch.Tensor]:
    """Both students' multi-scale + flip logits of ``image (1, 3, H, W)`` at full resolution,
    each ``(1, C, H, W)`` (VOC rule: max over scales)."""
    h, w = image.shape[-2:]
    outs = []
    for student in net.students:
        merged = None
        for s in scales:
            x = image if s == 1.0 else F.interpolate(image, size=(int(s * h), int(s * w)),
                                                     mode="bilinear", align_corners=False)
            seg = _flip_pass(student, x, (h, w))
            merged = seg if merged is None else torch.maximum(merged, seg)
        outs.append(merged)
    return outs


@torch.no_grad()
def coco_msc_logits(net: DualStudentNet, image: torch.Tensor, base: int = 448,
                    scales: Sequence[float] = COCO_EVAL_SCALES) -> List[torch.Tensor]:
    """Both students' multi-scale + flip logits of ``image (1, 3, H, W)``, each
    ``(1, C, base/16, base/16)`` (COCO rule: the image resized to ``base`` squared, sum over
    scales at the token-grid size)."""
    x0 = F.interpolate(image, size=(base, base), mode="bilinear", align_corners=False)
    grid = (base // 16, base // 16)
    outs = []
    for student in net.students:
        total = None
        for s in scales:
            x = x0 if s == 1.0 else F.interpolate(x0, size=(int(s * base), int(s * base)),
                                                  mode="bilinear", align_corners=False)
            seg = _flip_pass(student, x, grid)
            total = seg if total is None else total + seg
        outs.append(total)
    return outs


def select_branch(logits: Sequence[torch.Tensor], branch: str) -> torch.Tensor:
    """Logits whose softmax is the chosen prediction's probabilities: a student's own logits, or
    for ``ensemble`` the log of the mean of both students' softmax."""
    if branch == "1":
        return logits[0]
    if branch == "2":
        return logits[1]
    if branch == "ensemble":
        probs = (logits[0].softmax(1) + logits[1].softmax(1)) / 2
        return probs.clamp_min(1e-12).log()
    raise ValueError(f"branch must be one of {BRANCHES}")
