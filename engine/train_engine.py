"""The DuPL training engine shared by ``train_final_voc.py`` and ``train_final_coco.py``.

``main(args, dataset)`` makes the run folder and the logger and calls :func:`train`:

    set_up                  resume, seeding, network + optimiser, DDP wrapping, data, tensorboard
    for n in the schedule:
        optimizer_step      grad_accum micro-batches of model.dupl.dupl_step, backward, AdamW
        (stop request)      SIGTERM / SIGUSR1: checkpoint and stop, all ranks at the same n
        log_interval        running loss means (the NaN guard), tensorboard scalars and images
        validate_and_checkpoint   every --eval_iters and at the end: scores, checkpoint, best

A stop request during a validation ends it before its next image: the checkpoint holds the state
after iteration n and says that the validation after n is due; the relaunch (``--resume auto``)
runs that validation first, so the run's results equal an uninterrupted run's (:mod:`utils.stop`).

What each iteration computes (phases A, B, C and the loss weights) is the schedule of
:mod:`model.schedule`; the flags are :mod:`engine.train_args`, the data :mod:`engine.train_data`,
the step as DDP wraps it :mod:`engine.train_step`.
"""
import contextlib
import datetime
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from datasets.layout import DatasetLayout
from model.backbone import input_stats
from model.network import DualStudentNet, load_network
from model.par import PAR
from model.schedule import DuPLConfig
from model.settings import LOSS_NAMES, LOSS_TERMS, default_model, paper

from utils.checkpoint import read_checkpoint, save_checkpoint
from .run_state import adopt_model_flags, checkpoint_payload, set_rng_state
from utils.distributed import DistInfo, barrier, cleanup, init_distributed, same_on_every_rank
from utils.errors import UserError
from utils.precision import autocast, cpu_description, resolve_amp
from utils.results import write_results
from utils.safe_io import fresh_dir, make_output_dir, write_atomically
from .optim import PolyWarmupAdamW
from utils.stop import StopRequest, StopRequested
from .train_args import (BEST_CHECKPOINT, CHECKPOINT, check_args, check_crop,
                         config_from_args, resolve_resume)
from .script_common import script_logger
from .train_data import BatchStream, build_data
from .train_step import TrainingStep, release_idle_gradients, training_visuals
from .validation import COLUMNS, result_table, validate
from .visualize import log_training_images, training_grid

LOG_FORMAT = "%(asctime)s - %(filename)s - %(levelname)s: %(message)s"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _fmt_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


@dataclass
class Run:
    """What the training loop works with, from :func:`set_up`."""
    args: object
    dataset: str
    info: DistInfo
    logger: logging.Logger
    cfg: DuPLConfig
    layout: DatasetLayout
    val_set: object
    net: DualStudentNet               # the bare network: checkpoints, validation, visuals
    model: torch.nn.Module            # the TrainingStep of net, DDP-wrapped when distributed
    optimizer: PolyWarmupAdamW
    par: PAR
    stream: BatchStream
    aug_gen: torch.Generator          # the strong view's op draws
    writer: object                    # tensorboard SummaryWriter on the main rank, else None
    start: int                        # first iteration (0, or the resumed step)
    best: float                       # best mean Seg mIoU so far
    validation_due: bool              # the resumed checkpoint's validation was stopped: run it first

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.args.work_dir, CHECKPOINT)


class LossMeter:
    """Running sums of the unweighted loss terms and of the step's diagnostics over a log
    interval, kept on the device: :meth:`means` is the interval's one host sync."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(LOSS_NAMES), device=device)
        self.stats: Dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, out) -> None:
        self.sums += torch.stack([out.terms[k].float() for k in LOSS_NAMES])
        for k, v in out.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v.float()
        self.count += 1

    def means(self, step: int, checkpoint: str) -> Dict[str, float]:
        """The interval's mean of each term by name; a non-finite mean stops training (every rank)."""
        means = dict(zip(LOSS_NAMES, (self.sums / max(self.count, 1)).tolist()))
        if not all(math.isfinite(v) for v in means.values()):
            values = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
            raise UserError(f"loss became non-finite ({values}) at iteration {step}; stopping (the last "
                            f"good checkpoint is {checkpoint}). Lower --lr or check the data")
        return means

    def reset(self) -> None:
        self.sums.zero_()
        self.stats = {}
        self.count = 0


def build_network(args, ckpt: Optional[dict], device: torch.device) -> DualStudentNet:
    """The dual-student network, with the same initial weights on every rank. A resumed run
    takes every weight from its checkpoint: no pretrained weights to fetch."""
    torch.manual_seed(args.seed)
    pretrained = args.pretrained and ckpt is None
    net = DualStudentNet(args.backbone, args.num_classes, args.aux_layer, pretrained,
                         None if ckpt is not None else args.pretrained_path, args.backbone_args,
                         args.grad_checkpointing, args.input_mean, args.input_std).to(device)
    # the checkpoint records the block the depth rule chose and the statistics the encoder uses
    args.aux_layer = net.aux_layer
    args.input_mean, args.input_std = list(net.input_stats.mean), list(net.input_stats.std)
    check_crop(args, net.branch1.patch_size)
    return net


def resume_state(args, ckpt: Optional[dict], net, optimizer, logger) -> tuple:
    """``(first iteration, best score, validation due)``: ``(0, -1, False)`` for a fresh run, else
    the checkpoint's, with its weights and optimiser state loaded."""
    if not args.resume:
        return 0, -1.0, False
    load_network(net, ckpt, source=args.resume)
    if "optimizer" not in ckpt or "step" not in ckpt:
        raise UserError(f"--resume {args.resume} holds network weights only (no optimiser state "
                        "and step); it can be evaluated but not resumed")
    optimizer.load_state_dict(ckpt["optimizer"])
    start = int(ckpt["step"])
    logger.info(f"Resumed from {args.resume} at iteration {start}")
    return start, float(ckpt.get("best_miou", -1.0)), ckpt.get("validation_due") is True


def log_batch_and_data(args, dataset: str, info: DistInfo, train_set, val_set, logger) -> None:
    global_batch = args.samples_per_gpu * info.world_size * args.grad_accum
    logger.info(f"Total gpus: {info.world_size}, samples per gpu: {args.samples_per_gpu}, "
                f"gradient accumulation: {args.grad_accum}, global batch: {global_batch}")
    if global_batch != paper("global_batch", dataset):
        logger.warning(f"global batch {global_batch} differs from the paper's "
                       f"{paper('global_batch', dataset)}; set --samples_per_gpu / --grad_accum to match it")
    logger.info(f"Training set: {len(train_set)} images ({args.train_set}); validation: "
                f"{len(val_set)} images ({args.val_set})")


def set_up(args, dataset: str, info: DistInfo, logger, ckpt: Optional[dict]) -> Optional[Run]:
    """Everything the loop needs, or None when a resumed run is already complete. The order of
    the calls fixes the random streams: the data seed, the initial weights, then the run's seed
    (offset by the resumed step) and the checkpoint's RNG state."""
    cfg = config_from_args(args, dataset)
    device = info.device
    args.amp = resolve_amp(args.amp, device, logger.warning)
    torch.backends.cudnn.benchmark = not args.deterministic
    torch.backends.cudnn.deterministic = args.deterministic
    seed_everything(args.seed + info.rank)
    if ckpt is not None:
        adopt_model_flags(args, ckpt, default_model(dataset), logger.info)
    stats = input_stats(args.backbone, args.input_mean, args.input_std)
    layout, train_set, val_set = build_data(args, dataset, info, logger, stats)
    net = build_network(args, ckpt, device)
    optimizer = PolyWarmupAdamW(net.param_groups(args.lr, args.wt_decay), lr=args.lr,
                                max_iters=args.max_iters, weight_decay=args.wt_decay,
                                warmup_iters=args.warmup_iters, warmup_ratio=args.warmup_lr,
                                power=args.power)
    start, best, validation_due = resume_state(args, ckpt, net, optimizer, logger)
    if start >= args.max_iters and not validation_due:
        logger.info(f"{args.resume} is already at --max_iters {args.max_iters}; nothing to train")
        return None
    seed_everything(args.seed + info.rank + 1000 * start)
    if ckpt is not None and info.is_main and "rng" in ckpt:
        set_rng_state(ckpt["rng"])

    model = TrainingStep(net, cfg)
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    par = PAR().to(device)
    stream = BatchStream(train_set, args, info, start)
    aug_gen = torch.Generator().manual_seed(args.seed + info.rank + 104729 * start)
    log_batch_and_data(args, dataset, info, train_set, val_set, logger)
    writer = None
    if info.is_main and args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        # each launch writes into a folder of its own, made now: nothing in it can be planted
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
        writer = SummaryWriter(fresh_dir(os.path.join(args.work_dir, "tb"), stamp))
    return Run(args, dataset, info, logger, cfg, layout, val_set, net, model, optimizer, par, stream,
               aug_gen, writer, start, best, validation_due)


def optimizer_step(run: Run, n: int, meter: LossMeter, want_grid: bool = False) -> Optional[torch.Tensor]:
    """Iteration ``n``: ``--grad_accum`` micro-batches through the step (DDP synchronises the
    gradients with the last one), then one AdamW update. With ``want_grid``, returns the
    tensorboard grid of the last micro-batch (computed before the update)."""
    args, device = run.args, run.info.device
    grid = None
    for micro in range(args.grad_accum):
        batch = run.stream.next_batch(device)
        last_micro = micro == args.grad_accum - 1
        sync_ctx = run.model.no_sync() if (run.info.distributed and not last_micro) else contextlib.nullcontext()
        with sync_ctx:
            with autocast(device, args.amp):
                out = run.model(batch, n, run.par, run.aug_gen)
                if want_grid and last_micro:
                    cams, labels = training_visuals(run.net, batch, out, n, run.cfg, run.par)
                    grid = training_grid(batch.images, batch.cls_label, cams, labels, run.net.input_stats)
            (out.loss / args.grad_accum).backward()
        meter.add(out)
        active = out.active
        del out                          # the step's outputs are not kept past their backward
    release_idle_gradients(run.net, active)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grid


def log_interval(run: Run, n: int, meter: LossMeter, grid: Optional[torch.Tensor], log_now: bool,
                 t0: float) -> None:
    """End of a log (or eval) interval after iteration ``n``: the loss means, checked on every rank;
    with ``log_now`` the main rank's log line and tensorboard scalars and images."""
    means = meter.means(n + 1, run.checkpoint_path)
    if log_now and run.info.is_main:
        args, writer = run.args, run.writer
        elapsed = time.time() - t0
        eta = elapsed / (n + 1 - run.start) * (args.max_iters - n - 1)
        lr = run.optimizer.param_groups[0]["lr"]
        run.logger.info(f"Iter: {n + 1}; Elasped: {_fmt_time(elapsed)}; ETA: {_fmt_time(eta)}; "
                        f"LR: {lr:.3e}; " + " | ".join(f"{t.log_name}: {means[t.name]:.4f}" for t in LOSS_TERMS))
        if writer is not None:
            for k, v in means.items():
                writer.add_scalar(f"loss/{k}", v, n + 1)
            for i, g in enumerate(run.optimizer.param_groups):
                writer.add_scalar(f"lr/group{i}", g["lr"], n + 1)
            for k, v in meter.stats.items():
                writer.add_scalar(f"train/{k}", float(v) / meter.count, n + 1)
            log_training_images(writer, grid, n + 1)
    meter.reset()


def validate_and_checkpoint(run: Run, n: int, stop: StopRequest) -> Dict[str, object]:
    """Validate both students after iteration ``n`` (sharded over the ranks); the main rank logs
    the scores, writes results.json, the checkpoint and, on a new best mean Seg mIoU, best.pth.
    A stop request ends the validation early (:class:`StopRequested`)."""
    args, info, logger, cfg = run.args, run.info, run.logger, run.cfg
    logger.info("Validating...")
    result = validate(run.net, run.val_set, info.device, info.rank, info.world_size, args.crop_size,
                      cfg.bkg_thre, cfg.cam_scales, num_workers=min(2, args.num_workers), amp=args.amp,
                      stop=stop)
    if info.is_main:
        for k in range(2):
            logger.info(f"val cls score of branch #{k + 1}: {result['f1'][k]:.6f}")
        names = run.layout.display_names
        table = result_table(result, names)
        logger.info("\n" + table)
        write_results(args.work_dir, result["scores"], names, table, script=f"train_final_{run.dataset}",
                      split=args.val_set, num_images=result["num_images"], step=n + 1,
                      f1={f"branch{k + 1}": result["f1"][k] for k in range(2)},
                      input_size=args.crop_size, cam_scales=list(cfg.cam_scales), bkg_thre=cfg.bkg_thre)
        miou = {c: result["scores"][c]["miou"] for c in COLUMNS}
        if run.writer is not None:
            for c in COLUMNS:
                run.writer.add_scalar(f"val/{c}", miou[c], n + 1)
        score = (miou["Seg_1"] + miou["Seg_2"]) / 2
        is_best = score > run.best
        run.best = max(run.best, score)
        payload = checkpoint_payload(run.net, run.optimizer, n + 1, args, cfg, run.best, miou)
        save_checkpoint(run.checkpoint_path, payload)
        if is_best:
            save_checkpoint(os.path.join(args.work_dir, BEST_CHECKPOINT), payload)
    barrier()
    return result


def stop_for_preemption(run: Run, n: int, stop: StopRequest, validation_due: bool = False) -> None:
    """Checkpoint after iteration ``n`` (main rank) and say how to continue; ``validation_due``:
    the stop came during the validation after ``n``, which the relaunch runs first."""
    if run.info.is_main:
        save_checkpoint(run.checkpoint_path,
                        checkpoint_payload(run.net, run.optimizer, n + 1, run.args, run.cfg, run.best,
                                           validation_due=validation_due))
        during = " during its validation" if validation_due else ""
        then = " (the relaunch validates first)" if validation_due else ""
        run.logger.info(f"Stopped by {stop.name} after iteration {n + 1}{during}; checkpoint written to "
                        f"{run.checkpoint_path}. Relaunch with --resume auto "
                        f"--work_dir {run.args.work_dir} to continue{then}")
    barrier()


def train(args, dataset: str, info: DistInfo, logger, ckpt: Optional[dict] = None) -> Dict[str, object]:
    """Run DuPL training (from ``ckpt``, the object of ``args.resume``, when resuming); returns the
    last validation result."""
    run = set_up(args, dataset, info, logger, ckpt)
    if run is None:
        return {}
    meter = LossMeter(info.device)
    last_result: Dict[str, object] = {}
    t0 = time.time()
    progress = None
    if info.is_main:
        from tqdm import tqdm
        progress = tqdm(total=args.max_iters, initial=run.start, desc="train", mininterval=5,
                        dynamic_ncols=True, file=sys.stderr)
    run.model.train()
    stop = StopRequest()
    n = run.start - 1
    try:
        if run.validation_due:
            logger.info(f"The validation after iteration {run.start} was stopped: running it now")
            last_result = validate_and_checkpoint(run, n, stop)
        for n in range(run.start, args.max_iters):
            log_now = (n + 1) % args.log_iters == 0
            eval_now = (n + 1) % args.eval_iters == 0 or n + 1 == args.max_iters
            grid = optimizer_step(run, n, meter, want_grid=log_now and run.writer is not None)
            if progress is not None:
                progress.update(1)
            if stop.requested(info.device):
                stop_for_preemption(run, n, stop)
                break
            if log_now or eval_now:
                log_interval(run, n, meter, grid, log_now, t0)
            if eval_now:
                last_result = validate_and_checkpoint(run, n, stop)
    except StopRequested:
        stop_for_preemption(run, n, stop, validation_due=True)
    finally:
        stop.restore()
        if progress is not None:
            progress.close()
        if run.writer is not None:
            run.writer.close()
    logger.info(f"Training finished in {_fmt_time(time.time() - t0)}")
    return last_result


def _step_of(ckpt: Optional[dict]) -> int:
    """The checkpoint's step (-1 without a checkpoint, -2 where it holds none)."""
    if ckpt is None:
        return -1
    try:
        return int(ckpt["step"])
    except (KeyError, TypeError, ValueError):
        return -2


def main(args, dataset: str) -> Dict[str, object]:
    check_args(args, dataset)
    asked = args.resume
    resolve_resume(args)
    # a checkpoint is read (and refused) before anything is written next to it
    ckpt = read_checkpoint(args.resume) if args.resume else None
    info = init_distributed(cpu=args.cpu, require_gpu=True, join_timeout_s=args.join_timeout)
    created = False
    try:
        # each rank found (or did not find) its checkpoint itself: all must start from the same step
        if not same_on_every_rank(_step_of(ckpt), info.device):
            raise UserError(f"the ranks would start from different states (--resume {asked}): "
                            f"--work_dir {args.work_dir} must be one folder that every node sees (a "
                            "shared file system), with the same checkpoint.pth")
        if not args.work_dir:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
            args.work_dir = os.path.join("work_dirs", dataset, stamp)
        if info.is_main:
            created = not os.path.lexists(args.work_dir)
            make_output_dir(args.work_dir, "--work_dir", allow_link=True)
        barrier()
        logger = script_logger("dupl", info.is_main, LOG_FORMAT, os.path.join(args.work_dir, "train.log"),
                               every_rank=False)
        if info.is_main:
            gpu = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else cpu_description()
            logger.info(f"Pytorch version: {torch.__version__}; device: {gpu}")
            logger.info(f"Args: {args}")
            text = json.dumps(vars(args), indent=1, default=str)
            write_atomically(os.path.join(args.work_dir, "args.json"), lambda f: f.write(text))
        return train(args, dataset, info, logger, ckpt)
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
