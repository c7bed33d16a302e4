"""Validation during training (docs/method.md#evaluation), sharded across ranks.

Each rank scores every ``world_size``-th image (no padding, no duplicates); the six confusion
matrices and the F1 sums are summed over ranks, so the numbers equal a one-process run's. A stop
request (:mod:`utils.stop`) is looked at before each image, on every rank together.
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from model.cam import multiscale_cam
from model.pseudo_labels import cam_to_label
from model.settings import paper

from utils.distributed import all_reduce_sum
from utils.metric import ConfusionMatrix, format_table
from utils.precision import autocast
from utils.stop import StopRequest, StopRequested, ignore_stop_signals

COLUMNS = ("CAM_1", "aux_CAM_1", "Seg_1", "CAM_2", "aux_CAM_2", "Seg_2")


def shard(dataset, rank: int, world_size: int):
    """Every ``world_size``-th item starting at ``rank``."""
    return Subset(dataset, list(range(rank, len(dataset), world_size)))


def f1_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary F1 of ``logits > 0`` against ``target`` per image ``(N, K) -> (N,)``; 0 when there
    are neither predicted nor true positives (scikit-learn's ``zero_division`` default)."""
    pred = logits > 0
    true = target > 0.5
    tp = (pred & true).sum(1).float()
    denom = pred.sum(1).float() + true.sum(1).float()
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


@torch.no_grad()
def validate(net, dataset, device: torch.device, rank: int = 0, world_size: int = 1,
             crop_size: int = paper("crop_size"), bkg_thre: float = paper("bkg_thre"),
             cam_scales: Sequence[float] = paper("cam_scales"),
             num_workers: int = 2, amp: bool = False, stop: Optional[StopRequest] = None) -> Dict[str, object]:
    """Classification F1 and CAM / aux-CAM / segmentation IoU of both students on ``dataset``
    (an :class:`EvalDataset`). Images are resized to ``crop_size`` squared, predictions back to
    the mask size. Returns ``{"f1": [f1_1, f1_2], "scores": {column: metric dict}}``. With
    ``stop``, a stop request raises :class:`StopRequested` before the next image (every rank)."""
    was_training = net.training
    net.eval()
    try:
        return _validate(net, dataset, device, rank, world_size, crop_size, bkg_thre, cam_scales,
                         num_workers, amp, stop)
    finally:
        net.train(was_training)


def _validate(net, dataset, device, rank, world_size, crop_size, bkg_thre, cam_scales, num_workers, amp,
              stop) -> Dict[str, object]:
    num_classes = net.num_classes
    mats = {c: ConfusionMatrix(num_classes, device) for c in COLUMNS}
    f1_sum = torch.zeros(3, dtype=torch.float64, device=device)   # f1 of both students, count
    loader = DataLoader(shard(dataset, rank, world_size), batch_size=None, num_workers=num_workers,
                        worker_init_fn=ignore_stop_signals if stop is not None else None)
    items = iter(loader)
    # the same number of stop checks on every rank: the shards differ by one image at most
    for _ in range(math.ceil(len(dataset) / world_size)):
        if stop is not None and stop.requested(device):
            raise StopRequested(stop.name)
        item = next(items, None)
        if item is None:
            continue
        _, image, mask, label = item
        x = F.interpolate(image[None].to(device), size=(crop_size, crop_size), mode="bilinear",
                          align_corners=False)
        mask = mask.to(device)
        label = label[None].to(device)
        size = mask.shape
        with autocast(device, amp):
            for k, student in enumerate(net.students):
                out = student(x)
                f1_sum[k] += f1_score(out.cls.float(), label).sum().double()
                cam, cam_aux = multiscale_cam(student, x, cam_scales, maps=(out.fmap, out.fmap_aux))
                for name, c in ((f"CAM_{k + 1}", cam), (f"aux_CAM_{k + 1}", cam_aux)):
                    c = F.interpolate(c.float(), size=size, mode="bilinear", align_corners=False)
                    _, pred = cam_to_label(c, label, bkg_thre=bkg_thre)
                    mats[name].update(mask, pred[0])
                seg = F.interpolate(out.seg.float(), size=size, mode="bilinear", align_corners=False)
                mats[f"Seg_{k + 1}"].update(mask, seg.argmax(1)[0])
        f1_sum[2] += 1
    for m in mats.values():
        m.reduce_from_all_processes()
    all_reduce_sum(f1_sum)
    count = max(float(f1_sum[2]), 1.0)
    return {"f1": [float(f1_sum[0]) / count, float(f1_sum[1]) / count],
            "scores": {c: m.compute() for c, m in mats.items()}, "num_images": int(f1_sum[2])}


def result_table(result: Dict[str, object], class_names: Sequence[str]) -> str:
    scores = result["scores"]
    present = np.asarray(scores["Seg_1"]["present"])
    return format_table({c: scores[c]["iou"] for c in COLUMNS}, class_names, present)
