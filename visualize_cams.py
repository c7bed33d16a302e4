"""Draw CAMs, PAR-refined pseudo labels and predictions of a DuPL checkpoint, one PNG per image.

    python visualize_cams.py --model_path dupl_voc.pth --data_folder VOC2012 --split val --out vis/
    python visualize_cams.py --model_path dupl_coco.pth --num_classes 81 --dataset coco \\
        --img_folder coco --label_folder coco/SegmentationClass --out vis/
    python visualize_cams.py --model_path dupl_voc.pth --images a.jpg b.png --labels "dog,person" --out vis/

Each grid has the image's own tile size and two rows:

* row 1: the image, then student 1's CAM overlay for every present class, then student 2's;
* row 2: student 1's and student 2's PAR-refined pseudo label (docs/method.md#par), the segmentation prediction of ``--branch``
  and, when the dataset has a mask, the ground truth (VOC colours; ignore is cream).

The present classes are the image-level labels of the dataset split, or ``--labels``, or else the
classes whose classifier logit (mean of the two students) is positive, or the top-1 class when
none is. CAMs and pseudo labels are computed on the image resized to ``--size`` squared (as in
training) and resized back; the prediction is made at the image's own size (VOC: multi-scale +
flip, max over scales; COCO: the COCO evaluation rule).
"""
import argparse
import os
import sys
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.classes import COCO_CLASSES, VOC_CLASSES, VOC_DISPLAY_NAMES
from datasets.lists import ensure_lists, load_labels, read_list
from datasets.readers import read_image
from datasets.segmentation import EvalDataset
from utils.safe_io import output_path, save_image
from model.backbone import input_stats
from model.cam import multiscale_cam
from model.par import PAR
from model.pseudo_labels import refine_cams_with_par
from utils.cli import ArgumentParser
from utils.errors import UserError, exit_on_user_error
from engine.run_state import resolve_model_flags
from model.settings import default_model, paper
from engine.inference import (BRANCHES, COCO_EVAL_SCALES, VOC_EVAL_SCALES, coco_msc_logits, load_model,
                              segment_logits, select_branch)
from engine.script_common import (add_model_path_flag, check_model_path, class_names, collect_inputs,
                                  layout_from_flags, output_folder, output_names, pick_device)
from engine.visualize import caption, cam_overlay, colorize_label, tile_grid, to_uint8

# One image to draw: output name, RGB uint8 (H, W, 3), mask (H, W) or None, labels (K,) or None.
Item = Tuple[str, np.ndarray, Optional[np.ndarray], Optional[torch.Tensor]]


def parse_labels(text: str, num_classes: int) -> torch.Tensor:
    """``"dog,person"`` -> image-label vector ``(K,)``. Names are matched case-insensitively
    against the dataset's class names (VOC also takes the short names ``table``, ``plant``)."""
    known = {}
    tables = (VOC_CLASSES, VOC_DISPLAY_NAMES) if num_classes == len(VOC_CLASSES) else \
        (COCO_CLASSES,) if num_classes == len(COCO_CLASSES) else (class_names(num_classes),)
    for table in tables:
        known.update({n.lower(): i for i, n in enumerate(table) if i > 0})
    label = torch.zeros(num_classes - 1)
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name.lower() not in known:
            raise UserError(f"--labels: unknown class {name!r}; expected names among "
                            f"{', '.join(tables[0][1:6])}, ... ({num_classes - 1} classes)")
        label[known[name.lower()] - 1] = 1
    if label.sum() == 0:
        raise UserError("--labels names no class; give e.g. --labels \"dog,person\" or leave it out")
    return label


def split_items(args) -> Tuple[str, Iterator[Item], int]:
    """The dataset name, the first ``--num_images`` items of the split and their count."""
    layout = layout_from_flags(args, args.dataset)
    list_folder = ensure_lists(layout, args.list_folder, [args.split])
    ids = read_list(os.path.join(list_folder, args.split + ".txt"))
    with_masks = all(layout.mask_path(args.split, i) is not None for i in ids)
    labels = load_labels(list_folder)
    with_labels = all(i in labels for i in ids)
    data = EvalDataset(layout, list_folder, args.split, with_masks=with_masks, with_labels=with_labels,
                       stats=input_stats(args.backbone, args.input_mean, args.input_std))
    count = len(data) if args.num_images <= 0 else min(args.num_images, len(data))

    def items() -> Iterator[Item]:
        for i in range(count):
            img_id, _, mask, label = data[i]
            yield (img_id, data.raw_image(i), mask.numpy() if with_masks else None,
                   label if with_labels else None)

    return layout.name, items(), count


def file_items(args) -> Tuple[str, Iterator[Item], int]:
    for path in args.images:
        if not os.path.exists(path):
            raise UserError(f"--images: {path} does not exist")
    images, skipped = collect_inputs(args.images)
    for f in skipped:
        print(f"note: skipping {f} (not a .jpg/.jpeg/.png image)")
    if not images:
        raise UserError(f"--images {' '.join(args.images)} holds no .jpg/.jpeg/.png image")
    label = parse_labels(args.labels, args.num_classes) if args.labels else None
    dataset = "coco" if args.num_classes == len(COCO_CLASSES) else "voc"

    def items() -> Iterator[Item]:
        for path, name in zip(images, output_names(images)):
            yield name, read_image(path), None, label

    return dataset, items(), len(images)


@torch.no_grad()
def predicted_classes(net, x: torch.Tensor) -> torch.Tensor:
    """Image labels ``(K,)`` from the classifiers: mean logit of both students > 0, else top-1."""
    logits = torch.stack([student(x).cls[0].float() for student in net.students]).mean(0)
    label = (logits > 0).float()
    if label.sum() == 0:
        label[logits.argmax()] = 1
    return label.cpu()


@torch.no_grad()
def prediction(net, rgb: np.ndarray, dataset: str, device, branch: str,
               single_scale: bool) -> torch.Tensor:
    """Predicted class indices ``(H, W)`` of the image at its own size."""
    h, w = rgb.shape[:2]
    if dataset == "coco":
        scales = (1.0,) if single_scale else COCO_EVAL_SCALES
        x = net.input_stats.normalize(rgb)[None].to(device)
        logits = select_branch(coco_msc_logits(net, x, scales=scales), branch)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    else:
        scales = (1.0,) if single_scale else VOC_EVAL_SCALES
        logits = segment_logits(net, rgb, device, branch, scales)
    return logits[0].argmax(0).cpu()


@torch.no_grad()
def draw(net, par, item: Item, dataset: str, args, device,
         names: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """The grid of one image (``(2 H, n W, 3)`` uint8) and the names of its drawn classes."""
    _, rgb, mask, label = item
    h, w = rgb.shape[:2]
    size = args.size
    x = F.interpolate(net.input_stats.normalize(rgb)[None].to(device), size=(size, size),
                      mode="bilinear", align_corners=False)
    if label is None:
        label = predicted_classes(net, x)
    cls_label = label[None].to(device)
    present = [int(c) for c in torch.nonzero(label).flatten()]
    image01 = net.input_stats.denormalize(x)
    box = torch.tensor([[0, size, 0, size]], device=device)
    rgb01 = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0

    row1 = [caption(rgb, "image")]
    row2 = []
    for s, student in enumerate(net.students, 1):
        cam = multiscale_cam(student, x)[0]
        cams = cam * cls_label[:, :, None, None]
        pseudo = refine_cams_with_par(image01, cams, cls_label, args.bkg_thre, paper("low_thre"), box, par)
        full = F.interpolate(cam[:, present], size=(h, w), mode="bilinear",
                             align_corners=False)[0].cpu()
        for j, c in enumerate(present):
            row1.append(caption(to_uint8(cam_overlay(rgb01, full[j])), f"S{s} {names[c + 1]}"))
        pseudo = F.interpolate(pseudo[None].float(), size=(h, w), mode="nearest")[0, 0].cpu()
        row2.append(caption(to_uint8(colorize_label(pseudo)), f"S{s} PAR label"))
    pred = prediction(net, rgb, dataset, device, args.branch, args.single_scale)
    row2.append(caption(to_uint8(colorize_label(pred)), f"prediction ({args.branch})"))
    if mask is not None:
        row2.append(caption(to_uint8(colorize_label(torch.from_numpy(mask))), "ground truth"))
    return tile_grid([row1, row2]), [names[c + 1] for c in present]


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Draw CAMs, PAR pseudo labels and predictions of a "
                                            "DuPL checkpoint.")
    add_model_path_flag(p, required=True)
    p.add_argument("--out", "--work_dir", dest="out", required=True, help="output folder for the PNG grids (created)")
    src = p.add_argument_group("images: a dataset split, or --images")
    src.add_argument("--dataset", default="voc", choices=("voc", "coco"),
                     help="dataset of --data_folder or --img_folder")
    src.add_argument("--data_folder", help="VOC: the VOC2012 folder")
    src.add_argument("--img_folder", help="COCO: folder with train2014/ and val2014/")
    src.add_argument("--label_folder", help="COCO: mask folder (default: found next to --img_folder)")
    src.add_argument("--list_folder",
                     help="split lists (default: <dataset folder>_lists, derived when missing)")
    src.add_argument("--split", default="val", help="split to draw")
    src.add_argument("--num_images", type=int, default=20, help="first N images of the split (0: all)")
    src.add_argument("--images", nargs="+", help="image files and/or folders of images (not searched "
                     "recursively) instead of a dataset split")
    src.add_argument("--labels", help='with --images: present classes, e.g. "dog,person" '
                                      "(default: the classifiers' prediction)")
    p.add_argument("--size", type=int, default=paper("crop_size"), help="side of the square CAM input")
    p.add_argument("--bkg_thre", type=float, default=None,
                   help=f"high threshold of the PAR pseudo labels (default {paper('bkg_thre', 'voc')} VOC, "
                   f"{paper('bkg_thre', 'coco')} COCO)")
    p.add_argument("--branch", default="ensemble", choices=BRANCHES, help="which prediction to draw")
    p.add_argument("--single_scale", action=argparse.BooleanOptionalAction, default=False,
                   help="predict at scale 1.0 only (with flip)")
    p.add_argument("--backbone", default=None,
                   help="backbone the checkpoint was trained with (default: the checkpoint's)")
    p.add_argument("--num_classes", type=int, default=None,
                   help=f"classes incl. background (default: the checkpoint's, else {paper('num_classes', 'coco')} with "
                   f"--dataset coco and {paper('num_classes', 'voc')} otherwise)")
    p.add_argument("--aux_layer", type=int, default=None,
                   help="block of the aux classifier (default: the checkpoint's)")
    p.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=False,
                   help="run on the CPU even when a GPU exists")
    return p


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    check_model_path(args.model_path, "the checkpoint whose CAMs to draw")
    ckpt = resolve_model_flags(args, default_model(args.dataset))
    if args.size < 32:
        raise UserError(f"--size {args.size} is too small; use at least 32 ({paper('crop_size')} in training)")
    if args.images:
        if args.data_folder or args.img_folder:
            raise UserError("give either --images or a dataset split (--data_folder / --img_folder), "
                            "not both")
        dataset, items, count = file_items(args)
    else:
        if args.labels:
            raise UserError("--labels goes with --images; a dataset split uses its own image labels")
        dataset, items, count = split_items(args)
    if args.bkg_thre is None:
        args.bkg_thre = paper("bkg_thre", dataset)
    device = pick_device(args.cpu)
    net = load_model(ckpt, args.backbone, args.num_classes, args.aux_layer, device, source=args.model_path)
    del ckpt
    names = class_names(args.num_classes)
    par = PAR().to(device)
    output_folder(args.out, "--out")

    start = time.time()
    for n, item in enumerate(items, 1):
        grid, drawn = draw(net, par, item, dataset, args, device, names)
        path = output_path(args.out, item[0] + ".png")
        save_image(path, Image.fromarray(grid))
        print(f"[{n}/{count}] {path}: {', '.join(drawn)}", flush=True)
    print(f"drew {count} grid(s) into {args.out} in {time.time() - start:.1f} s on {device.type}")


if __name__ == "__main__":
    main(sys.argv[1:])
