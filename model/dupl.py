"""One DuPL training iteration, as the paper's algorithm box (docs/method.md#losses-and-phases).

    training forward of both students -> CAMs of both students (no grad; at scale 1.0 the
    forward's own token maps serve, only the mirror image goes through again)
    -> PTC labels from each student's own aux CAM          (patch-token contrast)
    -> pseudo labels from each student's CAM, refined by PAR, with the progressive threshold
    -> GMM filtering of each student's labels on its own per-pixel losses        (phase C)
    -> cross supervision: each student's labels train the other's decoder
    -> consistency on the pixels the peer leaves unsupervised, strong view        (phase C)
    -> discrepancy loss between the two feature maps

:class:`DuPLConfig` holds every number of the schedule; :func:`voc_config` and
:func:`coco_config` give the paper's (docs/method.md#losses-and-phases). :func:`dupl_step` returns the
total loss and the detached terms for logging, without any host synchronisation.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from datasets.transforms import denormalize

from .cam import CAM_SCALES, multiscale_cam
from .gmm import gmm_filter
from .losses import (balanced_seg_loss, cls_loss, consistency_loss, discrepancy_loss, ptc_loss)
from .par import PAR
from .pseudo_labels import label_to_aff_mask, ptc_labels, refine_cams_with_par
from .strong_aug import strong_augment
from .thresholds import cosine_descent, image_thresholds

VOC_HIGH_TARGETS = (0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
                    0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55)


@dataclass
class DuPLConfig:
    """Schedule, thresholds and loss weights of DuPL. Iteration ``n`` is 0-based."""

    num_classes: int = 21
    max_iters: int = 20000
    cam_iters: int = 2000          # seg pseudo labels from here (weights: n > cam_iters)
    gmm_iters: int = 8000          # GMM filtering + consistency from here
    # progressive high threshold (docs/method.md#thresholds)
    high_thre: float = 0.70
    high_targets: Sequence[float] = VOC_HIGH_TARGETS
    descent_start: int = 2000
    descent_steps: int = 18000
    low_thre: float = 0.25
    bkg_thre: float = 0.50         # validation only
    # loss weights and the iteration after which each is on
    w_ptc: float = 0.2
    ptc_after: int = -1            # COCO: 12000
    w_seg: float = 0.2
    w_dis: float = 0.1
    dis_after: int = -1            # COCO: 8000
    w_reg: float = 0.05
    reg_from_gmm_iter: bool = False  # COCO weights L_reg already at n == gmm_iters
    aux_seg_until: int = -1        # COCO: seg labels from the aux CAMs while n <= 12000
    # GMM filter (docs/method.md#gmm-filtering)
    gamma: float = 0.95
    gmm_valid_thre: float = 1.0
    # consistency branch (docs/method.md#consistency)
    aug_scale: float = 0.75
    conf_thre: float = 0.9
    cam_scales: Sequence[float] = CAM_SCALES
    # quirk switch (docs/method.md#quirks): True applies img_box in pixels to the token map
    ptc_box_in_pixels: bool = True
    ignore_index: int = 255

    def weights(self, n: int) -> Dict[str, float]:
        """Loss weights at iteration ``n`` (docs/method.md#losses-and-phases)."""
        reg_on = n >= self.gmm_iters if self.reg_from_gmm_iter else n > self.gmm_iters
        return {
            "cls": 1.0,
            "ptc": self.w_ptc if n > self.ptc_after else 0.0,
            "seg": self.w_seg if n > self.cam_iters else 0.0,
            "dis": self.w_dis if n > self.dis_after else 0.0,
            "reg": self.w_reg if reg_on else 0.0,
        }

    def phase(self, n: int) -> str:
        return "A" if n < self.cam_iters else ("B" if n < self.gmm_iters else "C")

    def class_thresholds(self, n: int, device=None) -> torch.Tensor:
        """Per-class high thresholds ``(K,)`` at iteration ``n`` (cosine descent)."""
        k = self.num_classes - 1
        start = torch.full((k,), self.high_thre, device=device)
        target = torch.as_tensor(self.high_targets, dtype=torch.float32, device=device).expand(k)
        return cosine_descent(n - self.descent_start, self.descent_steps, start, target)


def voc_config(**overrides) -> DuPLConfig:
    return DuPLConfig(**overrides)


def coco_config(**overrides) -> DuPLConfig:
    base = dict(num_classes=81, max_iters=80000, cam_iters=8000, gmm_iters=32000, high_thre=0.65,
                high_targets=(0.55,), descent_start=12000, descent_steps=68000, bkg_thre=0.45,
                ptc_after=12000, w_dis=0.05, dis_after=8000, reg_from_gmm_iter=True,
                aux_seg_until=12000)
    base.update(overrides)
    return DuPLConfig(**base)


@dataclass
class StepOutput:
    loss: torch.Tensor                      # weighted total, with graph
    terms: Dict[str, torch.Tensor]          # unweighted, detached: cls, ptc, seg, dis, reg
    stats: Dict[str, torch.Tensor] = field(default_factory=dict)   # detached diagnostics
    cams: Optional[Tuple[torch.Tensor, ...]] = None
    pseudo_labels: Optional[Tuple[torch.Tensor, ...]] = None


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def per_pixel_ce(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """``(B, C, H, W)`` logits and ``(B, H, W)`` labels -> ``(B, H, W)`` CE, 0 where ignored."""
    return F.cross_entropy(logits, label.long(), ignore_index=ignore_index, reduction="none")


def filter_noisy_labels(logits, labels, cfg: DuPLConfig, stats: Dict[str, torch.Tensor]):
    """GMM filtering of each student's pseudo labels on the per-pixel losses of its **own**
    logits (docs/method.md#gmm-filtering). ``logits``: two ``(B, C, H, W)``; ``labels``: two ``(B, H, W)``.
    Records the fraction of valid fits and of dropped pixels in ``stats``."""
    filtered = []
    for k in range(2):
        loss_map = per_pixel_ce(logits[k].detach(), labels[k], cfg.ignore_index)
        lab, valid = gmm_filter(loss_map, labels[k], gamma=cfg.gamma,
                                valid_thre=cfg.gmm_valid_thre, ignore_index=cfg.ignore_index)
        stats[f"gmm_valid_{k + 1}"] = valid.float().mean()
        stats[f"gmm_dropped_{k + 1}"] = (lab != labels[k]).float().mean()
        filtered.append(lab)
    return filtered


def release_idle_gradients(net, cfg: DuPLConfig, n: int) -> None:
    """Drop the gradients of the parameters that take no part in iteration ``n``'s loss, so the
    optimiser skips them as it does in the original (no weight decay, no step count, no moments).

    Only the decoders are idle: while the segmentation weight is 0 (VOC up to ``cam_iters``, COCO up
    to its 8k boundary) :func:`dupl_step` keeps them in the graph at weight 0, so DDP needs no
    ``find_unused_parameters``, and their gradients arrive as exact zeros; AdamW would still decay
    them and advance their step count. The classifiers see the classification loss in every phase;
    the unused ImageNet head is frozen. Call between ``backward`` and the optimiser step."""
    if cfg.weights(n)["seg"] > 0:
        return
    for student in net.students:
        for p in student.decoder.parameters():
            p.grad = None


def dupl_step(model, net, images: torch.Tensor, cls_label: torch.Tensor, img_box: torch.Tensor,
              n: int, cfg: DuPLConfig, par: PAR, aug_generator: Optional[torch.Generator] = None,
              keep_visuals: bool = False, max_present: Optional[int] = None,
              section: Optional[Callable[[str], ContextManager]] = None) -> StepOutput:
    """Losses of iteration ``n`` for a batch ``images (B, 3, H, W)`` (normalised),
    ``cls_label (B, K)``, ``img_box (B, 4)``.

    ``model`` is what the training forward goes through (the network, or its DDP wrapper);
    ``net`` is the bare :class:`DualStudentNet` (for the no-grad CAMs). ``max_present``, the
    largest number of classes in one image of the batch (read from the loader's CPU labels, so
    no device sync), lets PAR refinement run on that many channels instead of all classes.
    ``section(name)``, when given, wraps each stage (``cams``, ``strong_view``, ``forward``,
    ``ptc``, ``par_refine``, ``gmm``, ``consistency``) so a benchmark can time it.
    """
    section = section or (lambda name: contextlib.nullcontext())
    w = cfg.weights(n)
    phase = cfg.phase(n)
    b, _, h, wd = images.shape
    size = (h, wd)
    need_labels = w["seg"] > 0 or (phase != "A" and keep_visuals)
    need_ptc = w["ptc"] > 0
    need_cams = need_labels or need_ptc or keep_visuals
    use_gmm = phase == "C" and w["seg"] > 0
    use_reg = w["reg"] > 0

    x_aug = None
    if use_reg:
        with section("strong_view"):
            strong = strong_augment(denormalize(images), generator=aug_generator)
            x_aug = _upsample(strong, (int(h * cfg.aug_scale), int(wd * cfg.aug_scale)))
        with section("forward"):
            outs, aug_segs = model(images, x_aug)
    else:
        with section("forward"):
            outs = model(images)

    cams = None
    use_aux = n <= cfg.aux_seg_until
    if need_cams:
        # the final-layer CAM serves the segmentation labels (and the visuals) only; the patch-token
        # contrast and aux-CAM labels stop the CAM passes at the aux block
        final = keep_visuals or (need_labels and not use_aux)
        with section("cams"):
            # the forward already holds the scale-1.0 token maps of the images: reuse them
            cams = [multiscale_cam(s, images, cfg.cam_scales, maps=(o.fmap, o.fmap_aux), final=final)
                    for s, o in zip(net.students, outs)]

    terms = {"cls": sum(cls_loss(o.cls, cls_label) + cls_loss(o.cls_aux, cls_label) for o in outs)}
    zero = terms["cls"].new_zeros(())
    high = image_thresholds(cfg.class_thresholds(n, images.device), cls_label)      # (B,)
    stats: Dict[str, torch.Tensor] = {"high_thre": high.mean()}

    terms["ptc"] = zero
    if need_ptc:
        with section("ptc"):
            token_hw = outs[0].fmap.shape[-2:]
            box_scale = 1.0 if cfg.ptc_box_in_pixels else token_hw[0] / h
            terms["ptc"] = sum(
                ptc_loss(o.fmap, label_to_aff_mask(ptc_labels(cam_aux, cls_label, img_box, high,
                                                              cfg.low_thre, token_hw, box_scale)))
                for o, (_, cam_aux) in zip(outs, cams))

    labels = None
    if need_labels:
        with section("par_refine"):
            image_dn = denormalize(images)
            channels = None if max_present is None else 1 + max_present
            labels = [refine_cams_with_par(image_dn, (cam_aux if use_aux else cam) * cls_label[..., None, None],
                                           cls_label, high, cfg.low_thre, img_box, par,
                                           max_channels=channels)
                      for cam, cam_aux in cams]

    terms["seg"] = zero
    if w["seg"] > 0:
        logits = [_upsample(o.seg, size) for o in outs]
        if use_gmm:
            with section("gmm"):
                labels = filter_noisy_labels(logits, labels, cfg, stats)
        # cross supervision: student 1 learns from student 2's labels and vice versa
        terms["seg"] = (balanced_seg_loss(logits[0], labels[1], cfg.ignore_index)
                        + balanced_seg_loss(logits[1], labels[0], cfg.ignore_index))
        if use_reg:
            with section("consistency"):
                terms["reg"] = sum(
                    consistency_loss(logits[k], _upsample(aug_segs[k], size).flip(-1), labels[1 - k],
                                     cfg.conf_thre, cfg.ignore_index)
                    for k in range(2))
    terms.setdefault("reg", zero)

    terms["dis"] = discrepancy_loss(outs[0].fmap, outs[1].fmap) if w["dis"] > 0 else zero

    loss = sum(w[k] * terms[k] for k in ("cls", "ptc", "seg", "dis", "reg") if w[k] > 0)
    if w["seg"] == 0:
        # keep every parameter in the graph so DDP needs no find_unused_parameters
        loss = loss + 0.0 * sum(o.seg.sum() for o in outs)
    return StepOutput(loss, {k: v.detach() for k, v in terms.items()}, stats,
                      cams=tuple(c for pair in cams for c in pair) if (keep_visuals and cams) else None,
                      pseudo_labels=tuple(labels) if (keep_visuals and labels) else None)
