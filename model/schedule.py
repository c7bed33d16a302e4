"""The DuPL schedule: the loss terms, phases, loss weights and thresholds of the method, for
PASCAL VOC and MS COCO (docs/method.md#losses-and-phases).

:data:`model.settings.LOSS_TERMS` declares each loss term once (its name, weight setting, when it
is on, which parts of a student it trains, its train.log field); :meth:`DuPLConfig.weights`, the
step's sum, the loss meter, the log line, tensorboard and the idle-gradient rule follow from it. :class:`DuPLConfig` holds every number:
its fields are the method's rows of the table of settings (:mod:`model.settings`) and the
boundaries derived from them; :func:`paper_config` gives the paper's, with every boundary derived
from ``cam_iters`` and ``max_iters``, so a shortened run (``--cam_iters 100 --max_iters 400``)
keeps the paper's proportions:

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

from dataclasses import dataclass, field, make_dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from utils.labels import IGNORE_INDEX

from .settings import LOSS_TERMS, STUDENT_PARTS, method_settings
from .thresholds import cosine_descent



_PaperSettings = make_dataclass(
    "_PaperSettings", [(s.name, Sequence[float] if isinstance(s.voc, tuple) else Optional[s.parse_kind],
                        field(default=s.voc)) for s in method_settings()])


@dataclass
class DuPLConfig(_PaperSettings):
    """Schedule, thresholds and loss weights of DuPL (VOC's by default). Iteration ``n`` is 0-based.

    The fields of the table of settings (:mod:`model.settings`, ``method=True``: ``num_classes``,
    ``max_iters``, ``cam_iters``, ``gmm_iters``, the thresholds, the weights ``w_*``, ...) come
    first; the boundaries below are derived from them unless given."""

    descent_start: Optional[int] = None   # threshold descent from (None: cam_iters, COCO: late)
    descent_steps: Optional[int] = None   # None: max_iters - descent_start
    ptc_after: Optional[int] = None       # PTC weighted after (None: -1, COCO: late)
    dis_after: Optional[int] = None       # discrepancy weighted after (None: -1, COCO: cam_iters)
    aux_seg_until: Optional[int] = None   # seg labels from the aux CAMs while n <= (None: -1, COCO: late)
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        late = None if self.late_factor is None else int(round(self.cam_iters * self.late_factor))
        if self.descent_start is None:
            self.descent_start = self.cam_iters if late is None else late
        if self.descent_steps is None:
            self.descent_steps = self.max_iters - self.descent_start
        if self.ptc_after is None:
            self.ptc_after = -1 if late is None else late
        if self.aux_seg_until is None:
            self.aux_seg_until = -1 if late is None else late
        if self.dis_after is None:
            self.dis_after = -1 if late is None else self.cam_iters

    def weights(self, n: int) -> Dict[str, float]:
        """Loss weights at iteration ``n``, one per term of :data:`LOSS_TERMS`: a term is on *after*
        its boundary (``n > cam_iters``; see the module docstring for the off-by-one against
        :meth:`phase`)."""
        return {t.name: (1.0 if t.weight is None else getattr(self, t.weight)) if t.on(self, n) else 0.0
                for t in LOSS_TERMS}

    def phase(self, n: int) -> str:
        """Phase A (``n < cam_iters``), B (``n < gmm_iters``) or C: what the step computes."""
        return "A" if n < self.cam_iters else ("B" if n < self.gmm_iters else "C")

    def seg_labels_from_aux(self, n: int) -> bool:
        """Whether iteration ``n``'s segmentation pseudo labels come from the aux CAMs (COCO's
        early iterations) instead of the final-layer CAMs."""
        return n <= self.aux_seg_until

    def class_thresholds(self, n: int, device=None) -> torch.Tensor:
        """Per-class high thresholds ``(K,)`` at iteration ``n`` (cosine descent)."""
        k = self.num_classes - 1
        start = torch.full((k,), self.high_thre, device=device)
        target = torch.as_tensor(self.high_targets, dtype=torch.float32, device=device).expand(k)
        return cosine_descent(n - self.descent_start, self.descent_steps, start, target)


def paper_config(dataset: str = "voc", **overrides) -> DuPLConfig:
    """The paper's schedule of ``dataset`` (``voc`` or ``coco``), with ``overrides``. COCO's two
    boundaries, 8,000 and 12,000 of 80,000 in the paper's run, are ``cam_iters`` and
    ``round(1.5 cam_iters)``, so a shortened run keeps them in proportion; a boundary given in
    ``overrides`` is taken as given."""
    values = {s.name: s.value(dataset) for s in method_settings()}
    values.update(overrides)
    return DuPLConfig(**values)


def idle_parts(active: Sequence[str]) -> Tuple[str, ...]:
    """The parts of a student that no term of ``active`` (the names of the terms in the loss)
    trains: they take no part in the loss, and the optimiser must skip them."""
    trained = {p for t in LOSS_TERMS if t.name in active for p in t.trains}
    return tuple(p for p in STUDENT_PARTS if p not in trained)
