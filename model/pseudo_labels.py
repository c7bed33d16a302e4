"""Pseudo labels from CAMs: CAM -> label (docs/method.md#cams), PTC labels and affinity targets (docs/method.md#patch-token-contrast),
PAR-refined segmentation pseudo labels (docs/method.md#par).

Label convention everywhere: 0 background, ``c + 1`` for foreground class ``c`` (0-based
position in the image-label vector), ``ignore_index`` (255) for pixels without supervision.
Given inputs on one device, no function here synchronises with the host.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from utils.labels import IGNORE_INDEX

from .settings import paper

Threshold = Union[float, torch.Tensor]


def _per_image(thre: Threshold, ref: torch.Tensor) -> Threshold:
    """A float stays a float (compared in the CAM's dtype, as the original did); a per-image
    tensor ``(B,)`` becomes ``(B, 1, 1)`` in ``ref``'s dtype and device (pass it on that device
    already to avoid a blocking copy)."""
    if not torch.is_tensor(thre):
        return float(thre)
    return thre.to(dtype=ref.dtype, device=ref.device).reshape(-1, 1, 1)


def box_mask(img_box: torch.Tensor, size: Sequence[int], box_scale: float = 1.0,
             device: Optional[torch.device] = None) -> torch.Tensor:
    """Pixels inside each image's valid box: ``img_box (B, 4)`` ``[y0, y1, x0, x1]`` -> ``(B, h, w)`` bool.

    The box is half-open and used like slice indices ``[y0:y1, x0:x1]`` on an ``h x w`` map
    (ends beyond the map clip). With ``box_scale != 1`` the box is first multiplied by it, the
    start rounded down and the end rounded up (a cell is kept when it overlaps real pixels).
    ``box_scale=1.0`` on a token map reproduces the original's quirk (docs/method.md#quirks);
    ``token_size / crop_size`` (e.g. 1/16) is the corrected behaviour.
    """
    h, w = int(size[0]), int(size[1])
    box = img_box.to(device=device)
    if box_scale == 1.0:
        box = box.long()
        start_y, end_y, start_x, end_x = box[:, 0], box[:, 1], box[:, 2], box[:, 3]
    else:
        scaled = box.double() * box_scale
        start_y, start_x = scaled[:, 0].floor(), scaled[:, 2].floor()
        end_y, end_x = scaled[:, 1].ceil(), scaled[:, 3].ceil()
    rows = torch.arange(h, device=box.device)
    cols = torch.arange(w, device=box.device)
    in_rows = (rows >= start_y[:, None]) & (rows < end_y[:, None])
    in_cols = (cols >= start_x[:, None]) & (cols < end_x[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def cam_to_label(cam: torch.Tensor, cls_label: torch.Tensor, img_box: Optional[torch.Tensor] = None,
                 bkg_thre: Threshold = paper("bkg_thre"), high_thre: Threshold = paper("high_thre"),
                 low_thre: Threshold = paper("low_thre"),
                 ignore_mid: bool = False, ignore_index: int = IGNORE_INDEX, box_scale: float = 1.0):
    """Turn CAMs into pixel labels (docs/method.md#cams).

    ``cam (B, K, H, W)`` in [0, 1], ``cls_label (B, K)`` -> ``valid_cam (B, K, H, W)`` (CAMs of
    absent classes zeroed) and ``label (B, H, W)`` long. With ``v = max_c valid_cam`` and
    ``c*`` its argmax, the label is ``c* + 1``, 0 where ``v <= bkg_thre`` (plain labelling).
    With ``ignore_mid`` (three-way labelling of training) it is then set to ``ignore_index``
    where ``v <= high_thre`` and back to 0 where ``v <= low_thre``: foreground above the high
    threshold, ignored in between, background below the low one (``bkg_thre`` has no effect
    as long as ``high_thre >= bkg_thre``). ``high_thre`` (and the other thresholds) may be a
    float or a per-image tensor ``(B,)`` (dynamic threshold, docs/method.md#thresholds). When ``img_box (B, 4)`` is
    given, everything outside it becomes ``ignore_index`` (see ``box_mask`` for ``box_scale``).
    """
    valid_cam = cam * cls_label[:, :, None, None].to(cam.dtype)
    value, index = valid_cam.max(dim=1)
    label = index + 1
    label = torch.where(value <= _per_image(bkg_thre, value), torch.zeros_like(label), label)
    if ignore_mid:
        label = torch.where(value <= _per_image(high_thre, value),
                            torch.full_like(label, ignore_index), label)
        label = torch.where(value <= _per_image(low_thre, value), torch.zeros_like(label), label)
    if img_box is not None:
        inside = box_mask(img_box, label.shape[-2:], box_scale, device=label.device)
        label = torch.where(inside, label, torch.full_like(label, ignore_index))
    return valid_cam, label


def ptc_labels(cam_aux: torch.Tensor, cls_label: torch.Tensor, img_box: Optional[torch.Tensor],
               high_thre: Threshold, low_thre: Threshold, token_hw: Sequence[int],
               box_scale: float = 1.0, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Token-level labels for the patch-token contrast loss (docs/method.md#patch-token-contrast).

    The aux CAM ``(B, K, H, W)`` is resized bilinearly (``align_corners=False``) to the token
    grid ``token_hw = (h, w)`` and three-way labelled with ``high_thre`` (float or ``(B,)``) and
    ``low_thre``, then masked by ``img_box`` -> ``(B, h, w)`` long. ``box_scale=1.0`` applies the
    pixel-unit box unchanged to the token map (the original's quirk); ``1/16`` is the correction.
    """
    cam = F.interpolate(cam_aux, size=tuple(token_hw), mode="bilinear", align_corners=False)
    _, label = cam_to_label(cam, cls_label, img_box, bkg_thre=low_thre, high_thre=high_thre,
                            low_thre=low_thre, ignore_mid=True, ignore_index=ignore_index,
                            box_scale=box_scale)
    return label


def label_to_aff_mask(label: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Pairwise affinity target of the tokens (docs/method.md#patch-token-contrast).

    ``label (B, h, w)`` -> ``(B, hw, hw)``: 1 where the two tokens share a label (background
    pairs included), 0 where they differ, ``ignore_index`` where either token is ignored and on
    the diagonal. Built in one vectorised pass (``uint8`` by default to save memory).
    """
    flat = label.flatten(1)
    same = flat[:, :, None] == flat[:, None, :]
    ignored = flat == ignore_index
    ignored = ignored[:, :, None] | ignored[:, None, :]
    eye = torch.eye(flat.shape[1], dtype=torch.bool, device=flat.device)
    mask = same.to(dtype)
    return mask.masked_fill_(ignored | eye, ignore_index)


def _threshold_map(thre: Threshold, batch: int, size: Sequence[int], like: torch.Tensor):
    """A float, a per-image ``(B,)`` tensor or a map ``(B, 1, H, W)`` -> map ``(B, 1, H, W)``."""
    if not torch.is_tensor(thre):
        return torch.full((batch, 1, *size), float(thre), dtype=like.dtype, device=like.device)
    t = thre.to(dtype=like.dtype, device=like.device)
    if t.dim() == 4:
        return t.expand(batch, 1, *size)
    return t.reshape(-1, 1, 1, 1).expand(batch, 1, *size)


def _combine_high_low(label_high: torch.Tensor, label_low: torch.Tensor, ignore_index: int):
    """Final refined label (docs/method.md#par): the high-threshold label, its background turned
    into ignore unless the low-threshold label is background too."""
    background = torch.where(label_low == 0, torch.zeros_like(label_high),
                             torch.full_like(label_high, ignore_index))
    return torch.where(label_high == 0, background, label_high)


@torch.no_grad()
def refine_cams_with_par(image: torch.Tensor, cams: torch.Tensor, cls_label: torch.Tensor,
                         high_thre: Threshold, low_thre: Threshold, img_box: torch.Tensor, par,
                         ignore_index: int = IGNORE_INDEX, down_scale: int = 2,
                         max_channels: Optional[int] = None) -> torch.Tensor:
    """Segmentation pseudo labels from CAMs refined by PAR (docs/method.md#par), batched.

    ``image (B, 3, H, W)`` de-normalised in [0, 1], ``cams (B, K, H, W)`` (CAMs times the image
    labels), ``cls_label (B, K)``, ``high_thre`` a float, ``(B,)`` tensor or map ``(B, 1, H, W)``,
    ``low_thre`` likewise, ``img_box (B, 4)`` in pixels -> ``(B, H, W)`` long.

    Background channels ``[high ; cams]`` and ``[low ; cams]`` are resized to ``H/down_scale``;
    per image the softmax runs over background + present classes only, PAR refines them on the
    resized image, the result is resized back, its argmax mapped to class ids gives ``L_high``
    and ``L_low``; outside the box both are ignore. Final: ``L_high``, with its background set
    to ignore unless ``L_low`` is background too.

    All images and both thresholds go through one PAR call (the two stacks share each image's
    affinity as extra channels). Images have different numbers of present classes: absent
    classes get ``-inf`` before the softmax, i.e. probability exactly 0, which PAR keeps at 0,
    so they never win the argmax and the labels equal the per-image computation
    (the tests' reference in tests/helpers/oracles.py). ``max_channels`` (optional, a host-side int >= 1 +
    the largest number of present classes in the batch, e.g. from the loader's CPU labels)
    compacts the channels to that many instead of ``K + 1``; no host sync either way. Pass it
    in training: PAR's time and memory grow with the channels it refines.
    """
    b, k, h, w = cams.shape
    small = (h // down_scale, w // down_scale)
    bkg = torch.cat([_threshold_map(high_thre, b, (h, w), cams),
                     _threshold_map(low_thre, b, (h, w), cams)], dim=1)
    resized = F.interpolate(torch.cat([bkg, cams], dim=1), size=small, mode="bilinear",
                            align_corners=False)
    small_image = F.interpolate(image, size=small, mode="bilinear", align_corners=False)

    present = torch.cat([torch.ones_like(cls_label[:, :1], dtype=torch.bool), cls_label > 0], dim=1)
    if max_channels is None:
        index = torch.arange(k + 1, device=cams.device).expand(b, k + 1)
    else:
        order = torch.sort(present.to(torch.uint8), dim=1, descending=True, stable=True).indices
        index = order[:, :max_channels]
    valid = present.gather(1, index)
    m = index.shape[1]

    stacks = []
    for t in range(2):  # 0: high background, 1: low background
        channels = torch.cat([resized[:, t:t + 1], resized[:, 2:]], dim=1)
        picked = channels.gather(1, index[:, :, None, None].expand(b, m, *small))
        picked = picked.masked_fill(~valid[:, :, None, None], float("-inf"))
        stacks.append(picked.softmax(dim=1))
    refined = par(small_image, torch.cat(stacks, dim=1))
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    winner = refined.view(b, 2, m, h, w).max(dim=2).indices   # argmax (the first on ties), faster on the CPU
    labels = index.gather(1, winner.flatten(1)).view(b, 2, h, w)

    inside = box_mask(img_box, (h, w), device=labels.device)[:, None]
    labels = torch.where(inside, labels, torch.full_like(labels, ignore_index))
    return _combine_high_low(labels[:, 0], labels[:, 1], ignore_index)
