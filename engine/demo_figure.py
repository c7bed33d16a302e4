"""The demo's picture: a few validation images with what DuPL makes of them.

One row per image: the image, student 1's CAM of the present classes, the PAR-refined pseudo
label made from that CAM (the label that trains student 2's decoder), the segmentation of each
student and the ground truth; a colour legend below. CAMs, pseudo labels and predictions follow
the training-time validation rule (image resized to the crop size squared, results resized back).
"""
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.labels import IGNORE_INDEX
from model.settings import paper
from model.cam import multiscale_cam
from model.par import PAR
from model.pseudo_labels import refine_cams_with_par

from .visualize import caption, cam_overlay, colorize_label, legend, letterbox, tile_grid, to_uint8

COLUMNS = ("image", "CAM (student 1)", "pseudo label", "student 1", "student 2", "ground truth")


def pick_images(dataset, max_images: int) -> List[int]:
    """Indices of up to ``max_images`` colour items with at least one class, chosen so that as
    many classes as possible appear (greedy: each next image adds the most unseen classes)."""
    labels = [dataset[i][3] for i in range(len(dataset))]
    candidates = [i for i, l in enumerate(labels) if l.sum() > 0 and not _is_gray(dataset.raw_image(i))]
    seen, chosen = set(), []
    while candidates and len(chosen) < max_images:
        best = max(candidates, key=lambda i: (len(set(torch.nonzero(labels[i]).flatten().tolist()) - seen), -i))
        chosen.append(best)
        candidates.remove(best)
        seen |= set(torch.nonzero(labels[best]).flatten().tolist())
    return sorted(chosen)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb == rgb[..., :1]).all())


@torch.no_grad()
def demo_figure(net, dataset, names: Sequence[str], device: torch.device, crop_size: int = 128,
                bkg_thre: float = paper("bkg_thre"), low_thre: float = paper("low_thre"), max_images: int = 5,
                tile: int = 144) -> np.ndarray:
    """``(rows * tile + legend, len(COLUMNS) * tile, 3)`` uint8 figure of ``dataset`` (an
    :class:`~datasets.segmentation.EvalDataset` with masks and labels, normalised with the
    network's input statistics)."""
    was_training = net.training
    net.eval()
    par = PAR().to(device)
    rows, shown = [], {0, IGNORE_INDEX}
    for i in pick_images(dataset, max_images):
        _, image, mask, label = dataset[i]
        rgb = dataset.raw_image(i)
        size = mask.shape
        x = F.interpolate(image[None].to(device), size=(crop_size, crop_size), mode="bilinear",
                          align_corners=False)
        cls_label = label[None].to(device)
        present = torch.nonzero(label).flatten().tolist()
        back = lambda t: F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False)
        s1, s2 = net.students
        cam = multiscale_cam(s1, x)[0]                                   # (1, K, c, c)
        cams = cam * cls_label[:, :, None, None]
        box = torch.tensor([[0, crop_size, 0, crop_size]], device=device)
        # PAR sees the de-normalised crop, as in training
        pseudo = refine_cams_with_par(net.input_stats.denormalize(x), cams, cls_label, bkg_thre,
                                      low_thre, box, par)
        pseudo = F.interpolate(pseudo[None].float(), size=size, mode="nearest")[0, 0].long().cpu()
        heat = back(cam[:, present]).amax(1)[0].cpu()
        rgb01 = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
        preds = [back(s(x).seg).argmax(1)[0].cpu() for s in (s1, s2)]
        tiles = [rgb, to_uint8(cam_overlay(rgb01, heat))] + \
                [to_uint8(colorize_label(t)) for t in (pseudo, *preds, mask.long())]
        row = [letterbox(t, tile, nearest=j >= 2) for j, t in enumerate(tiles)]
        row[0] = caption(row[0], ", ".join(names[c + 1] for c in present))
        rows.append(row)
        for t in (pseudo, *preds, mask):
            shown |= set(torch.unique(t).tolist())
    net.train(was_training)
    header = [caption(np.full((18, tile, 3), 255, np.uint8), c) for c in COLUMNS]
    grid = np.concatenate([tile_grid([header]), tile_grid(rows)], axis=0)
    entries = [(c, names[c] if c != IGNORE_INDEX else "ignore") for c in sorted(shown)
               if c < len(names) or c == IGNORE_INDEX]
    return np.concatenate([grid, legend(entries, grid.shape[1])], axis=0)
