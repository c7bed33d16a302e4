"""The DuPL schedule: phases, loss weights, thresholds and the other numbers of the method, for
PASCAL VOC and MS COCO (docs/method.md#losses-and-phases).

:class:`DuPLConfig` holds every number; :func:`voc_config` and :func:`coco_config` give the
paper's, with every boundary derived from ``cam_iters`` and ``max_iters``, so a shortened run
(``--cam_iters 100 --max_iters 400``) keeps the paper's proportions:

    =====================  =========================  =====================================
                           VOC                        COCO (``late = round(1.5 cam_iters)``)
    =====================  =========================  =====================================
    PTC weight on          every n                    n > late            (12,000 of 80,000)
    discrepancy weight on  every n                    n > cam_iters       (8,000)
    seg labels from        the CAM                    the aux CAM while n <= late, then CAM
    threshold descent      cam_iters -> max_iters     late -> max_iters
    =====================  =========================  =====================================

Iteration ``n`` is 0-based. The original decides *what is computed* with ``n < cam_iters`` /
``n < gmm_iters`` (:meth:`DuPLConfig.phase`) but *how it is weighted* with ``n > cam_iters`` /
``n > gmm_iters`` (:meth:`DuPLConfig.weights`). The two disagree at the boundaries: at
``n == cam_iters`` the original computes the segmentation loss and weights it 0, and on VOC at
``n == gmm_iters`` it computes the consistency loss and weights it 0 (while the GMM filter already
acts on the labels). The training step keeps both rules: the phase chooses the labels (GMM
filtering from ``n == gmm_iters``), the weights choose the terms, and a term weighted 0 is not
computed (it logs 0), so the parameters move as in the original. COCO weights the consistency
loss from ``n == gmm_iters`` on (``reg_from_gmm_iter``), so there only ``cam_iters`` is off by one.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from .cam import CAM_SCALES
from .thresholds import cosine_descent

VOC_HIGH_TARGETS = (0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
                    0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55)


@dataclass
class DuPLConfig:
    """Schedule, thresholds and loss weights of DuPL (VOC's by default). Iteration ``n`` is 0-based."""

    num_classes: int = 21
    max_iters: int = 20000
    cam_iters: int = 2000          # seg pseudo labels from here (weights: n > cam_iters)
    gmm_iters: int = 8000          # GMM filtering + consistency from here
    # progressive high threshold (docs/method.md#thresholds)
    high_thre: float = 0.70
    high_targets: Sequence[float] = VOC_HIGH_TARGETS
    descent_start: Optional[int] = None   # None: cam_iters
    descent_steps: Optional[int] = None   # None: max_iters - descent_start
    low_thre: float = 0.25
    bkg_thre: float = 0.50         # validation only
    # loss weights and the iteration after which each is on
    w_ptc: float = 0.2
    ptc_after: int = -1            # COCO: 1.5 cam_iters
    w_seg: float = 0.2
    w_dis: float = 0.1
    dis_after: int = -1            # COCO: cam_iters
    w_reg: float = 0.05
    reg_from_gmm_iter: bool = False  # COCO weights L_reg already at n == gmm_iters
    aux_seg_until: int = -1        # COCO: seg labels from the aux CAMs while n <= 1.5 cam_iters
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

    def __post_init__(self):
        if self.descent_start is None:
            self.descent_start = self.cam_iters
        if self.descent_steps is None:
            self.descent_steps = self.max_iters - self.descent_start

    def weights(self, n: int) -> Dict[str, float]:
        """Loss weights at iteration ``n``: a term is on *after* its boundary (``n > cam_iters``;
        see the module docstring for the off-by-one against :meth:`phase`)."""
        reg_on = n >= self.gmm_iters if self.reg_from_gmm_iter else n > self.gmm_iters
        return {
            "cls": 1.0,
            "ptc": self.w_ptc if n > self.ptc_after else 0.0,
            "seg": self.w_seg if n > self.cam_iters else 0.0,
            "dis": self.w_dis if n > self.dis_after else 0.0,
            "reg": self.w_reg if reg_on else 0.0,
        }

    def phase(self, n: int) -> str:
        """Phase A (``n < cam_iters``), B (``n < gmm_iters``) or C: what the step computes."""
        return "A" if n < self.cam_iters else ("B" if n < self.gmm_iters else "C")

    def class_thresholds(self, n: int, device=None) -> torch.Tensor:
        """Per-class high thresholds ``(K,)`` at iteration ``n`` (cosine descent)."""
        k = self.num_classes - 1
        start = torch.full((k,), self.high_thre, device=device)
        target = torch.as_tensor(self.high_targets, dtype=torch.float32, device=device).expand(k)
        return cosine_descent(n - self.descent_start, self.descent_steps, start, target)


def voc_config(**overrides) -> DuPLConfig:
    """The paper's VOC schedule; the threshold descends from ``cam_iters`` to ``max_iters``."""
    return DuPLConfig(**overrides)


def coco_config(**overrides) -> DuPLConfig:
    """The paper's COCO schedule. Its two boundaries, 8,000 and 12,000 of 80,000 in the paper's
    run, are ``cam_iters`` and ``round(1.5 cam_iters)``, so a shortened run keeps them in
    proportion. A boundary given in ``overrides`` is taken as given."""
    base = dict(num_classes=81, max_iters=80000, cam_iters=8000, gmm_iters=32000, high_thre=0.65,
                high_targets=(0.55,), bkg_thre=0.45, w_dis=0.05, reg_from_gmm_iter=True)
    base.update(overrides)
    late = int(round(base["cam_iters"] * 1.5))
    derived = dict(descent_start=late, ptc_after=late, aux_seg_until=late, dis_after=base["cam_iters"])
    return DuPLConfig(**{**derived, **base})
