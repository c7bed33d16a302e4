"""The DuPL training engine shared by ``train_final_voc.py`` and ``train_final_coco.py``.

``get_args_parser(dataset)`` gives the original's flags with the dataset's defaults;
``main(args)`` sets up (distributed) training and runs :func:`train`. Every iteration is
:func:`model.dupl.dupl_step`; the loop around it handles data, the optimiser, logging,
validation, checkpoints and resume.
"""
import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from datasets.layout import dataset_layout
from datasets.prepare import ensure_lists
from datasets.segmentation import EvalDataset, TrainDataset
from datasets.transforms import TrainAugmentation
from utils.checkpoint import (adopt_model_flags, checkpoint_payload, load_network, read_checkpoint,
                              save_checkpoint, set_rng_state)
from model.dupl import DuPLConfig, coco_config, dupl_step, release_idle_gradients, voc_config
from model.network import DualStudentNet
from model.par import PAR

from .distributed import DistInfo, barrier, cleanup, init_distributed
from .cli import ArgumentParser, add_launcher_flags, add_numbers, check, check_range, check_scales
from utils.errors import UserError
from .results import write_results
from .schedule import PolyWarmupAdamW
from .validation import COLUMNS, result_table, validate
from .visualize import log_training_images

PAPER_GLOBAL_BATCH = {"voc": 4, "coco": 8}
LOG_FORMAT = "%(asctime)s - %(filename)s - %(levelname)s: %(message)s"
CHECKPOINT = "checkpoint.pth"
BEST_CHECKPOINT = "best.pth"

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
    g.add_argument("--amp", action=B, default=False, help="bf16 autocast on GPU")
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
    make = voc_config if dataset == "voc" else coco_config
    overrides = dict(num_classes=args.num_classes, max_iters=args.max_iters, cam_iters=args.cam_iters,
                     gmm_iters=args.gmm_iters, high_thre=args.high_thre, low_thre=args.low_thre,
                     bkg_thre=args.bkg_thre, w_ptc=args.w_ptc, w_seg=args.w_seg, w_dis=args.w_dis,
                     w_reg=args.w_reg, gamma=args.gamma, gmm_valid_thre=args.gmm_valid_thre,
                     conf_thre=args.conf_thre, aug_scale=args.aug_scale, cam_scales=args.cam_scales,
                     ptc_box_in_pixels=args.ptc_box_in_pixels)
    cfg = make(**overrides)
    if dataset == "voc":
        # the descent runs from cam_iters to the end (docs/method.md#thresholds)
        cfg.descent_start, cfg.descent_steps = args.cam_iters, args.max_iters - args.cam_iters
    else:
        # COCO's 8k/12k literals scale with a shortened schedule (cam_iters * 1.5 = 12k)
        cfg.descent_start = cfg.ptc_after = cfg.aux_seg_until = int(round(args.cam_iters * 1.5))
        cfg.dis_after = args.cam_iters
        cfg.descent_steps = args.max_iters - cfg.descent_start
    return cfg


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


def setup_logger(work_dir: Optional[str], is_main: bool) -> logging.Logger:
    logger = logging.getLogger("dupl")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter(LOG_FORMAT)
    if is_main:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        logger.addHandler(console)
        if work_dir:
            fh = logging.FileHandler(os.path.join(work_dir, "train.log"))
            fh.setFormatter(fmt)
            logger.addHandler(fh)
    return logger


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


class PreemptionFlag:
    """SIGTERM / SIGUSR1 (what SLURM sends before it kills a job) only set a flag; the loop checks it
    after each iteration, on every rank together, so all ranks stop at the same iteration."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))

    def __init__(self):
        self.name = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.name = signal.Signals(signum).name

    def requested(self, device: torch.device) -> bool:
        flag = self.name is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self.name is None:
                self.name = "a signal to another rank"
        return flag

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _fmt_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def build_data(args, dataset: str, info: DistInfo, logger):
    layout = dataset_layout(dataset, getattr(args, "data_folder", None), getattr(args, "img_folder", None),
                            getattr(args, "label_folder", None), args.num_classes)
    if info.is_main:
        ensure_lists(layout, args.list_folder, [args.train_set, args.val_set], log=logger.info)
    barrier()
    list_folder = ensure_lists(layout, args.list_folder, [args.train_set, args.val_set],
                               log=logger.info)
    aug = TrainAugmentation(args.crop_size, tuple(args.scales), coco_flip=dataset == "coco",
                            mirror_box_on_coco_flip=getattr(args, "mirror_box_on_flip", False))
    train_set = TrainDataset(layout, list_folder, args.train_set, aug)
    val_set = EvalDataset(layout, list_folder, args.val_set)
    return layout, train_set, val_set


class BatchStream:
    """Endless batches from a distributed-sampled loader; the sampler reshuffles every epoch
    (same epoch number on every rank, so the shards stay disjoint)."""

    def __init__(self, dataset, args, info: DistInfo, start_step: int):
        self.sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                          shuffle=True, seed=args.seed, drop_last=True)
        self.loader = DataLoader(dataset, batch_size=args.samples_per_gpu, sampler=self.sampler,
                                 num_workers=args.num_workers, drop_last=True,
                                 pin_memory=args.pin_memory and info.device.type == "cuda",
                                 persistent_workers=args.num_workers > 0,
                                 prefetch_factor=4 if args.num_workers > 0 else None)
        if len(self.loader) == 0:
            raise UserError(f"the training split has {len(dataset)} images: fewer than one batch of "
                            f"{args.samples_per_gpu} per GPU on {info.world_size} GPU(s)")
        self.epoch = (start_step * args.grad_accum) // len(self.loader)
        self._iter = None

    def __next__(self):
        if self._iter is None:
            self.sampler.set_epoch(self.epoch)
            self._iter = iter(self.loader)
        try:
            return next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._iter = None
            return next(self)
        except UserError as exc:
            # a loader worker re-raises the reader's error with its traceback: keep the message
            raise UserError(str(exc).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None


def train(args, dataset: str, info: DistInfo, logger) -> Dict[str, object]:
    """Run DuPL training; returns the last validation result."""
    cfg = config_from_args(args, dataset)
    device = info.device
    torch.backends.cudnn.benchmark = not args.deterministic
    torch.backends.cudnn.deterministic = args.deterministic
    seed_everything(args.seed + info.rank)
    layout, train_set, val_set = build_data(args, dataset, info, logger)

    ckpt = read_checkpoint(args.resume) if args.resume else None
    if ckpt is not None:
        adopt_model_flags(args, ckpt, DEFAULTS[dataset], logger.info)
    torch.manual_seed(args.seed)   # identical initial weights on every rank
    # a resumed run takes every weight from its checkpoint: no pretrained weights to fetch
    pretrained = args.pretrained and ckpt is None
    net = DualStudentNet(args.backbone, args.num_classes, args.aux_layer, pretrained,
                         None if ckpt is not None else args.pretrained_path, args.backbone_args,
                         args.grad_checkpointing).to(device)
    args.aux_layer = net.aux_layer      # the checkpoint records the block the depth rule chose
    check_crop(args, net.branch1.patch_size)
    optimizer = PolyWarmupAdamW(net.param_groups(args.lr, args.wt_decay), lr=args.lr,
                                max_iters=args.max_iters, weight_decay=args.wt_decay,
                                warmup_iters=args.warmup_iters, warmup_ratio=args.warmup_lr,
                                power=args.power)
    start, best = 0, -1.0
    if args.resume:
        load_network(net, ckpt, source=args.resume)
        if "optimizer" not in ckpt or "step" not in ckpt:
            raise UserError(f"--resume {args.resume} holds network weights only (no optimiser state "
                            "and step); it can be evaluated but not resumed")
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        best = float(ckpt.get("best_miou", best))
        logger.info(f"Resumed from {args.resume} at iteration {start}")
        if start >= args.max_iters:
            logger.info(f"{args.resume} is already at --max_iters {args.max_iters}; nothing to train")
            return {}
    seed_everything(args.seed + info.rank + 1000 * start)
    if ckpt is not None and info.is_main and "rng" in ckpt:
        set_rng_state(ckpt["rng"])

    model = net
    if info.distributed:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    par = PAR().to(device)
    stream = BatchStream(train_set, args, info, start)
    aug_gen = torch.Generator().manual_seed(args.seed + info.rank + 104729 * start)

    global_batch = args.samples_per_gpu * info.world_size * args.grad_accum
    logger.info(f"Total gpus: {info.world_size}, samples per gpu: {args.samples_per_gpu}, "
                f"gradient accumulation: {args.grad_accum}, global batch: {global_batch}")
    if global_batch != PAPER_GLOBAL_BATCH[dataset]:
        logger.warning(f"global batch {global_batch} differs from the paper's "
                       f"{PAPER_GLOBAL_BATCH[dataset]}; set --samples_per_gpu / --grad_accum to match it")
    logger.info(f"Training set: {len(train_set)} images ({args.train_set}); validation: "
                f"{len(val_set)} images ({args.val_set})")

    writer = None
    if info.is_main and args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(args.work_dir, "tb"))

    names = ("cls", "ptc", "seg", "dis", "reg")
    sums = torch.zeros(len(names), device=device)
    stat_sums: Dict[str, torch.Tensor] = {}
    count = 0
    last_result: Dict[str, object] = {}
    t0 = time.time()
    progress = None
    if info.is_main:
        from tqdm import tqdm
        progress = tqdm(total=args.max_iters, initial=start, desc="train", mininterval=5,
                        dynamic_ncols=True, file=sys.stderr)
    net.train()
    stop = PreemptionFlag()
    try:
        for n in range(start, args.max_iters):
            log_now = (n + 1) % args.log_iters == 0
            for micro in range(args.grad_accum):
                _, images, cls_label, img_box = next(stream)
                max_present = int(cls_label.sum(1).max())   # CPU tensor from the loader: no device sync
                images = images.to(device, non_blocking=True)
                cls_label = cls_label.to(device, non_blocking=True)
                img_box = img_box.to(device, non_blocking=True)
                last_micro = micro == args.grad_accum - 1
                sync_ctx = model.no_sync() if (info.distributed and not last_micro) else contextlib.nullcontext()
                with sync_ctx:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                        out = dupl_step(model, net, images, cls_label, img_box, n, cfg, par, aug_gen,
                                        keep_visuals=log_now and last_micro and writer is not None,
                                        max_present=max_present)
                    (out.loss / args.grad_accum).backward()
                sums += torch.stack([out.terms[k].float() for k in names])
                for k, v in out.stats.items():
                    stat_sums[k] = stat_sums.get(k, 0) + v.float()
                count += 1
            release_idle_gradients(net, cfg, n)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if progress is not None:
                progress.update(1)
            if stop.requested(device):
                if info.is_main:
                    save_checkpoint(os.path.join(args.work_dir, CHECKPOINT),
                                    checkpoint_payload(net, optimizer, n + 1, args, cfg, best))
                    logger.info(f"Stopped by {stop.name} after iteration {n + 1}; checkpoint written to "
                                f"{os.path.join(args.work_dir, CHECKPOINT)}. Relaunch with --resume auto "
                                f"--work_dir {args.work_dir} to continue")
                barrier()
                break

            eval_now = (n + 1) % args.eval_iters == 0 or n + 1 == args.max_iters
            if log_now or eval_now:
                means = (sums / max(count, 1)).tolist()          # the one host sync of the interval
                if not all(math.isfinite(v) for v in means):
                    values = ", ".join(f"{k} {v:.4g}" for k, v in zip(names, means))
                    raise UserError(f"loss became non-finite ({values}) at iteration {n + 1}; "
                                    f"stopping (the last good checkpoint is {os.path.join(args.work_dir, CHECKPOINT)}). "
                                    "Lower --lr or check the data")
                if log_now and info.is_main:
                    elapsed = time.time() - t0
                    eta = elapsed / (n + 1 - start) * (args.max_iters - n - 1)
                    lr = optimizer.param_groups[0]["lr"]
                    logger.info(f"Iter: {n + 1}; Elasped: {_fmt_time(elapsed)}; ETA: {_fmt_time(eta)}; "
                                f"LR: {lr:.3e}; cls_loss: {means[0]:.4f} | ptc_loss: {means[1]:.4f} | "
                                f"seg_loss: {means[2]:.4f} | sim_loss: {means[3]:.4f}")
                    if writer is not None:
                        for k, v in zip(names, means):
                            writer.add_scalar(f"loss/{k}", v, n + 1)
                        for i, g in enumerate(optimizer.param_groups):
                            writer.add_scalar(f"lr/group{i}", g["lr"], n + 1)
                        for k, v in stat_sums.items():
                            writer.add_scalar(f"train/{k}", float(v) / count, n + 1)
                        log_training_images(writer, out, images, cls_label, n + 1)
                sums.zero_()
                stat_sums = {}
                count = 0

            if eval_now:
                logger.info("Validating...")
                result = validate(net, val_set, device, info.rank, info.world_size, args.crop_size,
                                  cfg.bkg_thre, cfg.cam_scales, num_workers=min(2, args.num_workers),
                                  amp=args.amp)
                last_result = result
                if info.is_main:
                    for k in range(2):
                        logger.info(f"val cls score of branch #{k + 1}: {result['f1'][k]:.6f}")
                    table = result_table(result, layout.display_names)
                    logger.info("\n" + table)
                    write_results(args.work_dir, result["scores"], layout.display_names, table,
                                  script=f"train_final_{dataset}", split=args.val_set,
                                  num_images=result["num_images"], step=n + 1,
                                  f1={f"branch{k + 1}": result["f1"][k] for k in range(2)},
                                  input_size=args.crop_size, cam_scales=list(cfg.cam_scales),
                                  bkg_thre=cfg.bkg_thre)
                    if writer is not None:
                        for c in COLUMNS:
                            writer.add_scalar(f"val/{c}", result["scores"][c]["miou"], n + 1)
                    score = (result["scores"]["Seg_1"]["miou"] + result["scores"]["Seg_2"]["miou"]) / 2
                    is_best = score > best
                    best = max(best, score)
                    payload = checkpoint_payload(net, optimizer, n + 1, args, cfg, best,
                                                 {c: result["scores"][c]["miou"] for c in COLUMNS})
                    save_checkpoint(os.path.join(args.work_dir, CHECKPOINT), payload)
                    if is_best:
                        save_checkpoint(os.path.join(args.work_dir, BEST_CHECKPOINT), payload)
                barrier()
    finally:
        stop.restore()
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
    logger.info(f"Training finished in {_fmt_time(time.time() - t0)}")
    return last_result


def resolve_resume(args) -> None:
    """``--resume auto``: the run folder's checkpoint if there is one, else a fresh run there.
    ``--resume PATH`` without ``--work_dir``: continue in the checkpoint's own run folder."""
    if args.resume == "auto":
        path = os.path.join(args.work_dir, CHECKPOINT)
        args.resume = path if os.path.isfile(path) else None
    elif args.resume and not args.work_dir:
        args.work_dir = os.path.dirname(os.path.abspath(args.resume))


def main(args, dataset: str) -> Dict[str, object]:
    check_args(args, dataset)
    resolve_resume(args)
    info = init_distributed(cpu=args.cpu, require_gpu=True, join_timeout_s=args.join_timeout)
    created = False
    try:
        if not args.work_dir:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
            args.work_dir = os.path.join("work_dirs", dataset, stamp)
        if info.is_main:
            created = not os.path.exists(args.work_dir)
            try:
                os.makedirs(args.work_dir, exist_ok=True)
            except OSError:
                raise UserError(f"cannot create --work_dir {args.work_dir}") from None
        barrier()
        logger = setup_logger(args.work_dir, info.is_main)
        if info.is_main:
            gpu = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "CPU"
            logger.info(f"Pytorch version: {torch.__version__}; device: {gpu}")
            logger.info(f"Args: {args}")
            with open(os.path.join(args.work_dir, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=1, default=str)
        return train(args, dataset, info, logger)
    except BaseException:
        # a launch that fails before its first checkpoint leaves no run folder behind
        if created and not os.path.exists(os.path.join(args.work_dir, CHECKPOINT)):
            for handler in logging.getLogger("dupl").handlers:
                handler.close()
            logging.getLogger("dupl").handlers.clear()
            shutil.rmtree(args.work_dir, ignore_errors=True)
        raise
    finally:
        cleanup()
