"""The training flags of ``train_final_voc.py`` and ``train_final_coco.py`` and what they mean.

:func:`get_args_parser` gives the original's flags with the dataset's defaults (:data:`DEFAULTS`
reproduce the paper's runs); :func:`check_args` and :func:`check_crop` turn values that cannot
work into one-line errors; :func:`config_from_args` maps the flags onto the method's schedule
(:mod:`model.schedule`); :func:`resolve_resume` settles ``--resume`` and ``--work_dir``.
"""
import argparse
import os

from model.schedule import DuPLConfig, coco_config, voc_config

from utils.cli import ArgumentParser, add_launcher_flags, add_numbers, check, check_range, check_scales
from utils.errors import UserError
from utils.precision import add_amp_flag

CHECKPOINT = "checkpoint.pth"            # in the run folder: the last checkpoint, resumed from
BEST_CHECKPOINT = "best.pth"             # in the run folder: the best validation score so far

DEFAULTS = {
    "voc": dict(backbone="deit_base_patch16_224", aux_layer=None, num_classes=21, train_set="train_aug",
                val_set="val", samples_per_gpu=2, max_iters=20000, cam_iters=2000, gmm_iters=8000,
                eval_iters=2000, high_thre=0.70, bkg_thre=0.50, w_dis=0.1, num_workers=10,
                pin_memory=False),
    "coco": dict(backbone="deit_base_patch16_224", aux_layer=None, num_classes=81, train_set="train",
                 val_set="val_part", samples_per_gpu=1, max_iters=80000, cam_iters=8000,
                 gmm_iters=32000, eval_iters=4000, high_thre=0.65, bkg_thre=0.45, w_dis=0.05,
                 num_workers=16, pin_memory=True),
}


def get_args_parser(dataset: str) -> argparse.ArgumentParser:
    """The training flags; defaults reproduce the paper's run on ``dataset`` (voc or coco)."""
    d = DEFAULTS[dataset]
    p = ArgumentParser(description=f"Train DuPL on {'PASCAL VOC 2012' if dataset == 'voc' else 'MS COCO 2014'}")
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("data")
    if dataset == "voc":
        g.add_argument("--data_folder",
                       help="the VOC2012 folder (JPEGImages/, SegmentationClassAug/, ...; required)")
    else:
        g.add_argument("--img_folder", "--data_folder", dest="img_folder",
                       help="COCO image folder holding train2014/ and val2014/ (required)")
        g.add_argument("--label_folder", help="COCO mask folder holding train2014/ and val2014/ "
                       "(default: SegmentationClass inside or next to --img_folder)")
    g.add_argument("--list_folder", help="split lists and labels (default: <data>_lists, derived "
                   "from the data when missing)")
    g.add_argument("--train_set", default=d["train_set"], help="training split")
    g.add_argument("--val_set", default=d["val_set"], help="validation split")
    g.add_argument("--num_classes", type=int, default=d["num_classes"], help="classes incl. background")
    g.add_argument("--crop_size", type=int, default=448, help="training crop (pixels)")
    add_numbers(g, "--scales", default=(0.5, 2.0), help="random rescale range: smallest and largest factor")
    g.add_argument("--num_workers", type=int, default=d["num_workers"], help="loader workers per GPU")
    g.add_argument("--pin_memory", action=B, default=d["pin_memory"], help="pin loader memory")
    if dataset == "coco":
        g.add_argument("--mirror_box_on_flip", action=B, default=False,
                       help="mirror img_box with COCO's second flip (the original does not)")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=d["backbone"],
                   help="timm ViT-family encoder NAME[.TAG]: ViT/DeiT, DINOv2, DINOv3, CLIP, SigLIP, EVA-02")
    g.add_argument("--pretrained", action=B, default=True,
                   help="start from timm's pretrained weights (the tag given, else the family's default)")
    g.add_argument("--pretrained_path", help="local pretrained weights file (no download)")
    g.add_argument("--backbone_args", help="timm architecture overrides KEY=VALUE,... (depth, embed_dim, "
                   "num_heads, mlp_ratio), e.g. depth=4,embed_dim=192,num_heads=3; random weights only")
    g.add_argument("--aux_layer", type=int, default=d["aux_layer"],
                   help="block of the aux classifier (default: floor(3/4 depth), block 9 of 12)")
    g.add_argument("--grad_checkpointing", action=B, default=False,
                   help="recompute each encoder block in the backward pass (less memory, slower)")
    add_numbers(g, "--input_mean", default=None,
                help="R,G,B mean (0-1 units) the images are normalised with (default: the backbone's: "
                "ImageNet's for ViT/DeiT, else the mean of timm's config of the weights' tag)")
    add_numbers(g, "--input_std", default=None,
                help="R,G,B std of the normalisation (default: the backbone's, as --input_mean)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--samples_per_gpu", "--spg", type=int, default=d["samples_per_gpu"],
                   help="images per GPU per step")
    g.add_argument("--grad_accum", type=int, default=1,
                   help="micro-batches per optimiser step (keeps the paper's global batch on fewer GPUs)")
    g.add_argument("--max_iters", type=int, default=d["max_iters"], help="optimiser steps")
    g.add_argument("--lr", type=float, default=6e-5, help="backbone learning rate (heads x10)")
    g.add_argument("--warmup_iters", type=int, default=1500, help="linear warm-up steps")
    g.add_argument("--warmup_lr", type=float, default=1e-6, help="warm-up start ratio")
    g.add_argument("--wt_decay", type=float, default=1e-2, help="AdamW weight decay")
    g.add_argument("--power", type=float, default=0.9, help="poly decay power")
    add_amp_flag(g)
    g.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + r)")

    g = p.add_argument_group("DuPL")
    g.add_argument("--cam_iters", type=int, default=d["cam_iters"], help="segmentation starts after")
    g.add_argument("--gmm_iters", type=int, default=d["gmm_iters"], help="GMM filter + consistency from")
    add_numbers(g, "--cam_scales", default=(1.0, 0.5, 1.5), help="CAM scales (with flips)")
    g.add_argument("--high_thre", type=float, default=d["high_thre"], help="start of the high threshold")
    g.add_argument("--low_thre", type=float, default=0.25, help="low (background) threshold")
    g.add_argument("--bkg_thre", type=float, default=d["bkg_thre"], help="validation CAM threshold")
    g.add_argument("--w_ptc", type=float, default=0.2, help="PTC loss weight")
    g.add_argument("--w_seg", type=float, default=0.2, help="segmentation loss weight")
    g.add_argument("--w_dis", type=float, default=d["w_dis"], help="discrepancy loss weight")
    g.add_argument("--w_reg", type=float, default=0.05, help="consistency loss weight")
    g.add_argument("--gamma", type=float, default=0.95, help="GMM noisy posterior threshold")
    g.add_argument("--gmm_valid_thre", type=float, default=1.0, help="min gap of the GMM means")
    g.add_argument("--conf_thre", type=float, default=0.9, help="consistency confidence threshold")
    g.add_argument("--aug_scale", type=float, default=0.75, help="scale of the strong view")
    g.add_argument("--ptc_box_in_pixels", action=B, default=True,
                   help="apply img_box in pixels to the token labels as the original does "
                   "(a quirk of the original); --no-ptc_box_in_pixels scales it to tokens")

    g = p.add_argument_group("run")
    g.add_argument("--work_dir", help="run folder (default: work_dirs/<dataset>/<time>)")
    g.add_argument("--log_iters", type=int, default=200, help="log every")
    g.add_argument("--eval_iters", type=int, default=d["eval_iters"], help="validate + checkpoint every")
    g.add_argument("--resume", help="checkpoint to continue from, in its own run folder unless --work_dir "
                   "is given; 'auto': the checkpoint in --work_dir if there is one, else a fresh run there")
    g.add_argument("--tensorboard", action=B, default=True, help="write tensorboard scalars and images")
    g.add_argument("--cpu", action=B, default=False,
                   help="run on the CPU; without it a run that finds no usable GPU stops")
    g.add_argument("--deterministic", action=B, default=False,
                   help="cuDNN deterministic kernels (the original's setting; slower) instead of "
                   "cuDNN benchmark mode")
    add_launcher_flags(p)
    return p


def check_crop(args, patch: int) -> None:
    """Every image the training passes through the encoder holds at least one patch: the crop at
    the smallest CAM scale and at the strong view's scale. A crop that is not a multiple of the
    patch is fine (the encoder drops the remainder)."""
    smallest = min(list(args.cam_scales) + [args.aug_scale, 1.0])
    check(int(args.crop_size * smallest) >= patch,
          f"--crop_size {args.crop_size} at scale {smallest:g} (--cam_scales / --aug_scale) gives "
          f"{int(args.crop_size * smallest)}-pixel images, smaller than the {patch}-pixel patch of "
          f"{args.backbone}; use --crop_size {-(-patch // smallest):.0f} or more")


def config_from_args(args, dataset: str) -> DuPLConfig:
    """The schedule of ``dataset`` (voc or coco) with the flags' values; every boundary the flags
    do not name follows ``--cam_iters`` and ``--max_iters`` (:mod:`model.schedule`)."""
    make = voc_config if dataset == "voc" else coco_config
    return make(num_classes=args.num_classes, max_iters=args.max_iters, cam_iters=args.cam_iters,
                gmm_iters=args.gmm_iters, high_thre=args.high_thre, low_thre=args.low_thre,
                bkg_thre=args.bkg_thre, w_ptc=args.w_ptc, w_seg=args.w_seg, w_dis=args.w_dis,
                w_reg=args.w_reg, gamma=args.gamma, gmm_valid_thre=args.gmm_valid_thre,
                conf_thre=args.conf_thre, aug_scale=args.aug_scale, cam_scales=args.cam_scales,
                ptc_box_in_pixels=args.ptc_box_in_pixels)


def check_args(args, dataset: str) -> None:
    """Flag values that cannot work, as one-line errors."""
    positive = ("samples_per_gpu", "grad_accum", "max_iters", "log_iters", "eval_iters", "crop_size")
    for name in positive:
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive (got {getattr(args, name)})")
    if not 0 <= args.cam_iters <= args.gmm_iters <= args.max_iters:
        raise UserError(f"need 0 <= --cam_iters ({args.cam_iters}) <= --gmm_iters ({args.gmm_iters}) "
                        f"<= --max_iters ({args.max_iters})")
    if args.num_workers < 0:
        raise UserError("--num_workers must be >= 0")
    if args.pretrained_path and not os.path.isfile(args.pretrained_path):
        raise UserError(f"--pretrained_path {args.pretrained_path} does not exist")
    if args.resume == "auto":
        check(bool(args.work_dir), "--resume auto needs --work_dir: the run folder to resume in")
    elif args.resume and not os.path.isfile(args.resume):
        raise UserError(f"--resume {args.resume} does not exist (give a checkpoint file or 'auto')")
    check_scales("--scales", args.scales, count=2, ordered=True)
    check_scales("--cam_scales", args.cam_scales)
    for name, lo, example in (("input_mean", 0, "0.485,0.456,0.406"), ("input_std", None, "0.229,0.224,0.225")):
        values = getattr(args, name)
        if values is not None:
            check(len(values) == 3 and all((v >= 0 if lo == 0 else v > 0) and v <= 1 for v in values),
                  f"--{name} {','.join(f'{v:g}' for v in values)}: give three values (R,G,B) in "
                  f"{'[0, 1]' if lo == 0 else '(0, 1]'}, e.g. {example}")
    check(args.num_classes >= 2, f"--num_classes {args.num_classes}: need background and at least one class")
    for name in ("lr", "power", "aug_scale"):
        check(getattr(args, name) > 0, f"--{name} must be positive (got {getattr(args, name)})")
    for name in ("warmup_iters", "wt_decay", "w_ptc", "w_seg", "w_dis", "w_reg", "gmm_valid_thre"):
        check(getattr(args, name) >= 0, f"--{name} must be >= 0 (got {getattr(args, name)})")
    check_range("--warmup_lr", args.warmup_lr, 0, 1, lo_open=True)
    for name in ("high_thre", "low_thre", "bkg_thre", "gamma"):
        check_range(f"--{name}", getattr(args, name), 0, 1, lo_open=True, hi_open=True)
    check_range("--conf_thre", args.conf_thre, 0, 1)
    check(args.low_thre <= args.high_thre,
          f"--low_thre {args.low_thre} must not exceed --high_thre {args.high_thre}")


def resolve_resume(args) -> None:
    """``--resume auto``: the run folder's checkpoint if there is one, else a fresh run there.
    ``--resume PATH`` without ``--work_dir``: continue in the checkpoint's own run folder."""
    if args.resume == "auto":
        path = os.path.join(args.work_dir, CHECKPOINT)
        args.resume = path if os.path.isfile(path) else None
    elif args.resume and not args.work_dir:
        args.work_dir = os.path.dirname(os.path.abspath(args.resume))
