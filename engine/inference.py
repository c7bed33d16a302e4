"""Multi-scale segmentation inference of a trained DuPL network.

VOC rule: at each scale the image is resized to ``floor(s H) x floor(s W)``, ``[x ; flip(x)]``
goes through a student, both logits are upsampled to ``H x W`` and summed (the flipped one
flipped back); scales are merged by element-wise max.
COCO rule: the image is first resized to 448 x 448; each scale's logits are resized to the
448-pixel token grid (28 x 28) and summed with the flipped ones; scales are summed; the result is
upsampled to the mask size by the caller.
Which student's prediction is used is a fixed choice (``branch`` 1, 2 or ``ensemble`` = mean of
both students' softmax), never one made by looking at ground truth.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.checkpoint import read_checkpoint

from .run_state import model_settings, saved_backbone_args, saved_input_stats
from model.network import DualStudentNet, load_network
from model.settings import default_model, paper

from utils.precision import autocast
from utils.safe_io import save_npz

VOC_EVAL_SCALES = paper("eval_scales", "voc")
COCO_EVAL_SCALES = paper("eval_scales", "coco")
BRANCHES = ("1", "2", "ensemble")
# Images whose shorter side is below this are enlarged for the network by segment_logits (a ViT
# needs at least one 16-pixel patch per side at every scale); the logits are resized back.
MIN_SIDE = 32


def load_model(model, backbone: Optional[str], num_classes: Optional[int],
               aux_layer: Optional[int], device: torch.device,
               defaults: Optional[Dict[str, object]] = None, source: str = "checkpoint") -> DualStudentNet:
    """A :class:`DualStudentNet` with the weights of ``model`` (a checkpoint path or an object read
    from one; this project's or the original's), in eval mode on ``device``. No download. Settings
    left as None come from the checkpoint (:func:`model_settings`), else from ``defaults`` (VOC's
    by default); the input statistics are the checkpoint's, else its backbone's."""
    if isinstance(model, str):
        source, model = model, read_checkpoint(model)
    defaults = defaults or default_model("voc")
    backbone, num_classes, aux_layer = model_settings(model, backbone, num_classes, aux_layer, defaults,
                                                      source)
    mean, std = saved_input_stats(model, source)
    net = DualStudentNet(backbone, num_classes, aux_layer, pretrained=False,
                         backbone_args=saved_backbone_args(model, source), input_mean=mean, input_std=std)
    load_network(net, model, source=source)
    return net.to(device).eval()


def _flip_pair(student, x: torch.Tensor) -> torch.Tensor:
    """Decoder logits of ``x (1, 3, h, w)`` and of its mirror in one pass: ``(2, C, h', w')`` float32,
    contiguous (the layout of a saved and reloaded copy, so resizing either gives the same bits).
    An image smaller than one patch (a tiny dataset image, or a small one at a small scale) is
    padded at the bottom and right with zeros (the mean colour once normalised) to one patch."""
    p = student.patch_size
    h, w = x.shape[-2:]
    if h < p or w < p:
        x = F.pad(x, (0, max(0, p - w), 0, max(0, p - h)))
    return student.segment(torch.cat([x, x.flip(-1)], dim=0)).float().contiguous()


def _flip_sum(pair: torch.Tensor, size) -> torch.Tensor:
    """A flip pair ``(2, C, h', w')`` resized to ``size`` and summed, the mirror flipped back."""
    seg = F.interpolate(pair.float(), size=size, mode="bilinear", align_corners=False)
    return seg[:1] + seg[1:].flip(-1)


def to_size(t: torch.Tensor, size) -> torch.Tensor:
    """``t (N, C, h, w)`` resized bilinearly (align_corners=False) to ``size`` = (H, W), or ``t``
    itself when it already has that size."""
    size = (int(size[0]), int(size[1]))
    if tuple(t.shape[-2:]) == size:
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def _resized(image: torch.Tensor, s: float, h: int, w: int) -> torch.Tensor:
    if s == 1.0:
        return image
    # at least one pixel a side (a tiny image at a small scale), padded to a patch by _flip_pair
    return F.interpolate(image, size=(max(1, int(s * h)), max(1, int(s * w))), mode="bilinear",
                         align_corners=False)


@torch.no_grad()
def voc_raw_logits(net: DualStudentNet, image: torch.Tensor,
                   scales: Sequence[float] = VOC_EVAL_SCALES) -> List[List[torch.Tensor]]:
    """The network outputs behind the VOC rule, before any resizing: for each student, for each
    scale, the decoder logits of the scaled image and its mirror ``(2, C, h_s, w_s)`` float32.
    :func:`merge_voc` turns them into the full-resolution logits; they are what evaluation saves."""
    h, w = image.shape[-2:]
    return [[_flip_pair(student, _resized(image, s, h, w)) for s in scales] for student in net.students]


def merge_voc(raw: Sequence[Sequence[torch.Tensor]], size) -> List[torch.Tensor]:
    """Full-resolution ``(1, C, H, W)`` logits per student from :func:`voc_raw_logits`' output:
    each flip pair resized to ``size`` = (H, W) and summed, the scales merged by element-wise max."""
    outs = []
    for pairs in raw:
        merged = None
        for pair in pairs:
            seg = _flip_sum(pair, size)
            merged = seg if merged is None else torch.maximum(merged, seg)
        outs.append(merged)
    return outs


@torch.no_grad()
def voc_msc_logits(net: DualStudentNet, image: torch.Tensor,
                   scales: Sequence[float] = VOC_EVAL_SCALES) -> List[torch.Tensor]:
    """Both students' multi-scale + flip logits of ``image (1, 3, H, W)`` at full resolution,
    each ``(1, C, H, W)`` (VOC rule: max over scales)."""
    return merge_voc(voc_raw_logits(net, image, scales), tuple(image.shape[-2:]))


@torch.no_grad()
def coco_msc_logits(net: DualStudentNet, image: torch.Tensor, base: int = paper("crop_size", "coco"),
                    scales: Sequence[float] = COCO_EVAL_SCALES) -> List[torch.Tensor]:
    """Both students' multi-scale + flip logits of ``image (1, 3, H, W)``, each
    ``(1, C, base/p, base/p)`` for the encoder's patch ``p`` (COCO rule: the image resized to
    ``base`` squared, sum over scales at the token-grid size; 28 x 28 for the paper's 448 / 16)."""
    x0 = F.interpolate(image, size=(base, base), mode="bilinear", align_corners=False)
    outs = []
    for student in net.students:
        grid = student.backbone.grid(base, base)
        total = None
        for s in scales:
            seg = _flip_sum(_flip_pair(student, _resized(x0, s, base, base)), grid)
            total = seg if total is None else total + seg
        outs.append(total)
    return outs


def ensemble_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble rule: the mean of both students' softmax over the classes (dim 1)."""
    return (logits[0].softmax(1) + logits[1].softmax(1)) / 2


def select_branch(logits: Sequence[torch.Tensor], branch: str) -> torch.Tensor:
    """Logits whose softmax is the chosen prediction's probabilities: a student's own logits, or
    for ``ensemble`` the log of :func:`ensemble_probs`."""
    if branch == "1":
        return logits[0]
    if branch == "2":
        return logits[1]
    if branch == "ensemble":
        return ensemble_probs(logits).clamp_min(1e-12).log()
    raise ValueError(f"branch must be one of {BRANCHES}")


@torch.no_grad()
def segment_logits(net: DualStudentNet, rgb: np.ndarray, device: torch.device, branch: str = "ensemble",
                   scales: Sequence[float] = VOC_EVAL_SCALES, amp: bool = False) -> torch.Tensor:
    """Logits ``(1, C, H, W)`` (float32) of the chosen branch for a uint8 RGB image ``(H, W, 3)``,
    VOC multi-scale + flip rule at the image's own size, normalised with the network's statistics."""
    h, w = rgb.shape[:2]
    x = net.input_stats.normalize(rgb)[None].to(device)
    if min(h, w) < MIN_SIDE:
        f = MIN_SIDE / min(h, w)
        x = F.interpolate(x, size=(max(MIN_SIDE, round(h * f)), max(MIN_SIDE, round(w * f))),
                          mode="bilinear", align_corners=False)
    with autocast(device, amp):
        logits = voc_msc_logits(net, x, scales)
    return to_size(select_branch([l.float() for l in logits], branch), (h, w))


def save_logits(path: str, rule: str, raw, size, scales: Sequence[float]) -> None:
    """Write the logits behind an image's prediction to ``path`` (``.npz``, uncompressed float32).

    ``rule`` ``voc``: ``raw`` is :func:`voc_raw_logits`' output (both students' flip pairs per
    scale, before resizing); ``coco``: both students' token-grid logits from
    :func:`coco_msc_logits`. ``size`` = (H, W) of the image. :func:`load_logits` rebuilds any
    branch's full-resolution logits from the file with the same operations as the evaluation, so a
    CRF re-run from the file gives the evaluation's predictions, at a fraction of the bytes of
    full-resolution maps.
    """
    arrays = {"rule": np.array(rule), "size": np.asarray(size, dtype=np.int64),
              "scales": np.asarray(scales, dtype=np.float64)}
    for k, student in enumerate(raw, start=1):
        if rule == "voc":
            for i, pair in enumerate(student):
                arrays[f"student{k}_scale{i}"] = pair.float().cpu().numpy()
        elif rule == "coco":
            arrays[f"student{k}"] = student.float().cpu().numpy()
        else:
            raise ValueError("rule must be 'voc' or 'coco'")
    save_npz(path, **arrays)


def load_logits(path: str, branch: str = "ensemble") -> np.ndarray:
    """Full-resolution logits ``(C, H, W)`` float32 of ``branch`` (``1``, ``2``, ``ensemble``) from a
    file of :func:`save_logits`; their softmax is the probability map the evaluation refined with CRF."""
    with np.load(path) as f:
        rule, size = str(f["rule"]), tuple(int(v) for v in f["size"])
        if rule == "voc":
            n = len(f["scales"])
            raw = [[torch.from_numpy(f[f"student{k}_scale{i}"]) for i in range(n)] for k in (1, 2)]
            chosen = select_branch(merge_voc(raw, size), branch)
        else:
            chosen = select_branch([torch.from_numpy(f[f"student{k}"]) for k in (1, 2)], branch)
            chosen = to_size(chosen, size)
    return chosen[0].numpy()

