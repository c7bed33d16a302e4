"""What the optimiser and DDP need around :func:`model.dupl.dupl_step`, and what tensorboard shows
of it.

:class:`TrainingStep` is the step as a module, so ``DistributedDataParallel`` can wrap it: the
gradient all-reduce covers the whole step while the step knows nothing of DDP (with DDP's defaults
the step's output comes back unchanged). :func:`release_idle_gradients` runs between ``backward``
and the optimiser step. :func:`training_visuals` gives the CAMs and pseudo labels of a step for
the training images, computing from the step's outputs whatever the step itself did not need.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from model.dupl import Batch, StepOutput, dupl_step, seg_pseudo_labels, student_cams
from model.network import DualStudentNet
from model.par import PAR
from model.schedule import DuPLConfig, idle_parts


class TrainingStep(nn.Module):
    """``dupl_step`` of the network it holds; ``forward(batch, n, par, generator)``.

    The parts of a student that no term in the step's loss trains (:func:`model.schedule.idle_parts`
    of the step's ``active`` terms: the decoders while the segmentation weight is 0, iterations up
    to and including ``cam_iters``) take no part in the loss. They stay in the graph at weight 0
    (``loss + 0.0 * sum(their parameters)``), so DDP needs no ``find_unused_parameters``; their
    gradients arrive as exact zeros and :func:`release_idle_gradients` drops them.
    """

    def __init__(self, net: DualStudentNet, cfg: DuPLConfig):
        super().__init__()
        self.net = net
        self.cfg = cfg

    def forward(self, batch: Batch, n: int, par: PAR,
                generator: Optional[torch.Generator] = None) -> StepOutput:
        out = dupl_step(self.net, batch, n, self.cfg, par, generator)
        idle = _idle_parameters(self.net, out.active)
        if idle:
            out.loss = out.loss + 0.0 * sum(p.sum() for p in idle)
        return out


def _idle_parameters(net: DualStudentNet, active: Sequence[str]) -> List[torch.Tensor]:
    """The trainable parameters of the student parts that no term of ``active`` trains."""
    parts = idle_parts(active)
    return [p for student in net.students for part in parts for p in getattr(student, part).parameters()
            if p.requires_grad]


def release_idle_gradients(net: DualStudentNet, active: Sequence[str]) -> None:
    """Drop the gradients of the parameters that no term of ``active`` (the step output's
    ``active``: the terms in its loss) trains, so the optimiser skips them as it does in the
    original (no weight decay, no step count, no moments). :class:`TrainingStep` keeps them in the
    graph at weight 0 and their gradients are exact zeros; AdamW would still decay them and advance
    their step count. Call between ``backward`` and the optimiser step."""
    for p in _idle_parameters(net, active):
        p.grad = None


@torch.no_grad()
def training_visuals(net: DualStudentNet, batch: Batch, out: StepOutput, n: int, cfg: DuPLConfig,
                     par: PAR) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
    """The final-layer CAM and aux CAM of both students (``[cam_1, aux_1, cam_2, aux_2]``, each
    ``(B, K, H, W)``) and, after phase A, both students' pseudo labels ``(B, H, W)`` (None in
    phase A) of the step ``out`` of iteration ``n``. Whatever the step did not compute is computed
    here from its outputs, as the step would have; call it before the optimiser step (the
    weights that made ``out``)."""
    cams = out.cams
    if cams is None or any(cam is None for cam, _ in cams):
        cams = student_cams(net, batch.images, out.outputs, cfg, final=True)
    labels = out.pseudo_labels
    if labels is None and cfg.phase(n) != "A":
        labels = seg_pseudo_labels(net, batch, cams, out.high, cfg.seg_labels_from_aux(n), cfg, par)
    return [c for pair in cams for c in pair], labels
