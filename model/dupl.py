"""One DuPL training iteration, as the paper's algorithm box (docs/method.md#losses-and-phases).

    training forward of both students -> CAMs of both students (no grad; at scale 1.0 the
    forward's own token maps serve, only the mirror image goes through again)
    -> PTC labels from each student's own aux CAM          (patch-token contrast)
    -> pseudo labels from each student's CAM, refined by PAR, with the progressive threshold
    -> GMM filtering of each student's labels on its own per-pixel losses        (phase C)
    -> cross supervision: each student's labels train the other's decoder
    -> consistency on the pixels the peer leaves unsupervised, strong view        (phase C)
    -> discrepancy loss between the two feature maps

The schedule (which term is on at iteration ``n``, and with which weight) is
:class:`model.schedule.DuPLConfig`. :func:`dupl_step` takes the bare network and a
:class:`Batch` and returns the total loss, the detached terms for logging and what it computed on
the way (the students' outputs, CAMs, pseudo labels), without any host synchronisation. Each
stage runs inside a ``torch.profiler.record_function("dupl/<stage>")`` range, so a profiler (or
``benchmarks/bench_train.py``) sees where the time goes.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from utils.labels import IGNORE_INDEX

from .cam import multiscale_cam
from .gmm import gmm_filter
from .losses import (balanced_seg_loss, cls_loss, consistency_loss, discrepancy_loss, ptc_loss)
from .network import DualStudentNet, StudentOutput
from .par import PAR
from .pseudo_labels import label_to_aff_mask, ptc_labels, refine_cams_with_par
from .schedule import DuPLConfig
from .settings import LOSS_NAMES
from .strong_aug import strong_augment
from .thresholds import image_thresholds

Cams = List[Tuple[Optional[torch.Tensor], torch.Tensor]]


@dataclass
class Batch:
    """One training batch on the device: ``images (B, 3, H, W)`` (normalised), ``cls_label
    (B, K)``, ``img_box (B, 4)``. ``max_present``, the largest number of classes in one image (a
    host int read from the loader's CPU labels, so no device sync), lets PAR refinement run on that
    many channels instead of all classes."""
    images: torch.Tensor
    cls_label: torch.Tensor
    img_box: torch.Tensor
    max_present: Optional[int] = None


@dataclass
class StepOutput:
    loss: torch.Tensor                      # weighted total, with graph
    terms: Dict[str, torch.Tensor]          # unweighted, detached: cls, ptc, seg, dis, reg
    stats: Dict[str, torch.Tensor] = field(default_factory=dict)   # detached diagnostics
    outputs: List[StudentOutput] = field(default_factory=list)     # training forward, with graph
    high: Optional[torch.Tensor] = None     # (B,) per-image high threshold
    cams: Optional[Cams] = None             # (cam, cam_aux) per student; cam None: aux CAM only
    pseudo_labels: Optional[List[torch.Tensor]] = None   # per student (B, H, W), GMM-filtered in C
    active: Tuple[str, ...] = ()            # the terms in ``loss`` (computed, weight > 0)


def stage(name: str):
    """A named range of the step, ``dupl/<name>`` for torch.profiler."""
    return torch.profiler.record_function(f"dupl/{name}")


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def per_pixel_ce(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
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


def training_forward(net: DualStudentNet, images: torch.Tensor, cfg: DuPLConfig,
                     strong_view: bool, generator: Optional[torch.Generator]):
    """Both students on ``images`` (with gradient): their outputs and, with ``strong_view``, their
    decoder logits on the strong view of ``images`` resized by ``cfg.aug_scale`` (else None)."""
    if not strong_view:
        with stage("forward"):
            return net(images), None
    h, w = images.shape[-2:]
    stats = net.input_stats
    with stage("strong_view"):
        strong = strong_augment(stats.denormalize(images), generator=generator, stats=stats)
        x_aug = _upsample(strong, (int(h * cfg.aug_scale), int(w * cfg.aug_scale)))
    with stage("forward"):
        return net(images, x_aug)


def student_cams(net: DualStudentNet, images: torch.Tensor, outs: List[StudentOutput],
                 cfg: DuPLConfig, final: bool = True) -> Cams:
    """Multi-scale CAM and aux CAM ``(B, K, H, W)`` of each student (no grad); the training
    forward's token maps ``outs`` serve scale 1.0. ``final=False``: the aux CAM only (the CAM is
    None), the encoder passes stop at the aux block."""
    return [multiscale_cam(s, images, cfg.cam_scales, maps=(o.fmap, o.fmap_aux), final=final)
            for s, o in zip(net.students, outs)]


def ptc_term(outs: List[StudentOutput], cams: Cams, batch: Batch, high: torch.Tensor,
             cfg: DuPLConfig) -> torch.Tensor:
    """Patch-token contrast of each student's final tokens against the three-way token labels of
    its own aux CAM, summed over the students."""
    token_hw = outs[0].fmap.shape[-2:]
    box_scale = 1.0 if cfg.ptc_box_in_pixels else token_hw[0] / batch.images.shape[2]
    return sum(
        ptc_loss(o.fmap, label_to_aff_mask(ptc_labels(cam_aux, batch.cls_label, batch.img_box, high,
                                                      cfg.low_thre, token_hw, box_scale)))
        for o, (_, cam_aux) in zip(outs, cams))


def seg_pseudo_labels(net: DualStudentNet, batch: Batch, cams: Cams, high: torch.Tensor, use_aux: bool,
                      cfg: DuPLConfig, par: PAR) -> List[torch.Tensor]:
    """Each student's segmentation pseudo labels ``(B, H, W)``: its CAM (the aux CAM with
    ``use_aux``) on the present classes, refined by PAR with the per-image high threshold
    ``high (B,)`` and the low threshold. PAR sees the batch's 8-bit images / 255, de-normalised with
    the encoder's statistics."""
    image_dn = net.input_stats.denormalize(batch.images)
    channels = None if batch.max_present is None else 1 + batch.max_present
    return [refine_cams_with_par(image_dn, (cam_aux if use_aux else cam) * batch.cls_label[..., None, None],
                                 batch.cls_label, high, cfg.low_thre, batch.img_box, par,
                                 max_channels=channels)
            for cam, cam_aux in cams]


def cross_supervision(outs: List[StudentOutput], labels: List[torch.Tensor], aug_segs, size,
                      use_gmm: bool, cfg: DuPLConfig, stats: Dict[str, torch.Tensor]):
    """The segmentation loss, each student's decoder against the other's (GMM-filtered with
    ``use_gmm``) labels, and with ``aug_segs`` the consistency loss on the strong view. Returns
    ``(L_seg, L_reg or None, the labels used)``."""
    logits = [_upsample(o.seg, size) for o in outs]
    if use_gmm:
        with stage("gmm"):
            labels = filter_noisy_labels(logits, labels, cfg, stats)
    seg = (balanced_seg_loss(logits[0], labels[1], cfg.ignore_index)
           + balanced_seg_loss(logits[1], labels[0], cfg.ignore_index))
    reg = None
    if aug_segs is not None:
        with stage("consistency"):
            reg = sum(consistency_loss(logits[k], _upsample(aug_segs[k], size).flip(-1), labels[1 - k],
                                       cfg.conf_thre, cfg.ignore_index)
                      for k in range(2))
    return seg, reg, labels


def dupl_step(net: DualStudentNet, batch: Batch, n: int, cfg: DuPLConfig, par: PAR,
              aug_generator: Optional[torch.Generator] = None) -> StepOutput:
    """Losses of iteration ``n`` for ``batch``, weighted by ``cfg.weights(n)``; a term weighted 0
    is not computed (it logs 0). ``aug_generator`` drives the strong view's op draws."""
    w = cfg.weights(n)
    images, cls_label = batch.images, batch.cls_label
    use_seg, use_ptc, use_reg = w["seg"] > 0, w["ptc"] > 0, w["reg"] > 0
    use_aux = cfg.seg_labels_from_aux(n)
    outs, aug_segs = training_forward(net, images, cfg, use_reg, aug_generator)

    cams = None
    if use_seg or use_ptc:
        # the final-layer CAM serves the segmentation labels only; the patch-token contrast and
        # aux-CAM labels stop the CAM passes at the aux block
        with stage("cams"):
            cams = student_cams(net, images, outs, cfg, final=use_seg and not use_aux)

    terms = {"cls": sum(cls_loss(o.cls, cls_label) + cls_loss(o.cls_aux, cls_label) for o in outs)}
    zero = terms["cls"].new_zeros(())
    high = image_thresholds(cfg.class_thresholds(n, images.device), cls_label)      # (B,)
    stats: Dict[str, torch.Tensor] = {"high_thre": high.mean()}

    if use_ptc:
        with stage("ptc"):
            terms["ptc"] = ptc_term(outs, cams, batch, high, cfg)

    labels = None
    if use_seg:
        with stage("par_refine"):
            labels = seg_pseudo_labels(net, batch, cams, high, use_aux, cfg, par)
        terms["seg"], reg, labels = cross_supervision(outs, labels, aug_segs if use_reg else None,
                                                      images.shape[-2:], cfg.phase(n) == "C", cfg, stats)
        if reg is not None:
            terms["reg"] = reg
    if w["dis"] > 0:
        terms["dis"] = discrepancy_loss(outs[0].fmap, outs[1].fmap)

    active = tuple(k for k in LOSS_NAMES if w[k] > 0 and k in terms)
    loss = sum(w[k] * terms[k] for k in active)
    logged = {k: terms[k].detach() if k in terms else zero for k in LOSS_NAMES}
    return StepOutput(loss, logged, stats, outs, high, cams, labels, active)
