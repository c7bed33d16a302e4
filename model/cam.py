"""Multi-scale class activation maps of a student (docs/method.md#cams)."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .network import Student
from .settings import paper

CAM_SCALES = paper("cam_scales")


def spatial_extreme(cam: torch.Tensor, largest: bool) -> torch.Tensor:
    """The maximum (``largest``) or minimum of every ``(image, class)`` map of ``(B, K, H, W)``,
    as ``(B, K, 1, 1)``. Exact in any order, so the layout picks the route: the CAMs of the token
    maps are channels-last, where reducing over rows, then columns, is faster on the CPU than over
    both at once."""
    name = "amax" if largest else "amin"
    if not cam.is_contiguous() and cam.is_contiguous(memory_format=torch.channels_last):
        rows = getattr(cam.permute(0, 2, 3, 1), name)(dim=1)          # (B, W, K)
        return getattr(rows, name)(dim=1)[:, :, None, None]
    return getattr(cam, name)(dim=(2, 3), keepdim=True)


def normalize_cam(cam: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Min-max normalise every ``(image, class)`` map of ``(B, K, H, W)`` to [0, 1]:
    ``M - min(M)``, then ``/ (max + eps)``."""
    cam = cam - spatial_extreme(cam, largest=False)
    return cam / (spatial_extreme(cam, largest=True) + eps)


@torch.no_grad()
def multiscale_cam(student: Student, x: torch.Tensor, scales: Sequence[float] = CAM_SCALES,
                   maps: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, final: bool = True
                   ) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Multi-scale + flip CAM and aux CAM of ``x (B, 3, H, W)``, each ``(B, K, H, W)`` in [0, 1].

    For each scale, ``[x_s ; flip(x_s)]`` goes through the student in one pass; both maps are
    upsampled (bilinear) to ``H x W``, the flipped half is flipped back and merged by max, ReLU'd,
    summed over scales and min-max normalised per image and class.

    ``maps``: the final and aux token maps of ``x`` itself, when the caller already has them (the
    training forward computes the same maps: the network has no dropout), so only the mirror goes
    through the student at scale 1.0. Without them every scale runs in full.
    ``final=False``: the aux CAM only (the CAM is returned as None); the encoder stops at the aux
    block, which is all the patch-token contrast needs before the segmentation labels start.
    """
    b, _, h, w = x.shape
    totals = [None, None]
    for s in scales:
        if s == 1.0 and maps is not None:
            own = student.cams_of_maps(maps[0].detach() if final else None, maps[1].detach())
            mirror = student.raw_cams(x.flip(-1), final)
            cams = [None if o is None else torch.cat([o.to(m.dtype), m]) for o, m in zip(own, mirror)]
        else:
            xs = x if s == 1.0 else F.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear",
                                                  align_corners=False)
            cams = student.raw_cams(torch.cat([xs, xs.flip(-1)], dim=0), final)
        for k, cam in enumerate(cams):
            if cam is None:
                continue
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
            cam = F.relu(torch.maximum(cam[:b], cam[b:].flip(-1)))
            totals[k] = cam if totals[k] is None else totals[k] + cam
    return tuple(None if t is None else normalize_cam(t) for t in totals)
