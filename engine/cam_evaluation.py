"""CAM and pseudo-label evaluation of a DuPL checkpoint (the field's first table).

For every image of the split (resized to ``--size`` squared, the training-time rule; ``--batch_size``
images per pass) and each student: the multi-scale + flip CAM and aux CAM
(:func:`model.cam.multiscale_cam`, the rule of training and validation, bf16 with ``--amp``),
resized to the mask size and labelled with the ground-truth image labels at every background
threshold of ``--thresholds`` (the plain labelling of validation; all thresholds are counted in
one pass over the pixels, :class:`utils.metric.ThresholdSweep`); the
PAR-refined pseudo labels of the CAM at ``--bkg_thre`` (:func:`model.pseudo_labels.refine_cams_with_par`
with one threshold, so no pixel is left uncertain) and, with ``--crf``, the CAM label refined by
dense CRF (``--crf_backend``; the torch CRF refines ``--crf_batch`` images with the same classes
at once, ``--crf_class_chunk`` classes filtered at a time). Shards over ranks by stride; the confusion matrices are reduced over all ranks.

Prints the mIoU at ``--bkg_thre`` (the training threshold) and the best threshold of the sweep per
column, writes ``results.json`` / ``results.txt`` to ``--work_dir`` and, on request, the CAMs of the
present classes (``cams/<id>.npz``, float16 at the mask size) and the label PNGs.
"""
import argparse
import functools
import os
import sys
import time
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function
from torch.utils.data import DataLoader

from utils.errors import UserError
from datasets.layout import DATASETS
from datasets.segmentation import EvalDataset
from utils.safe_io import make_output_dir, output_path, save_image, save_npz
from model.backbone import input_stats
from model.cam import multiscale_cam
from model.settings import paper
from model.par import PAR
from model.pseudo_labels import refine_cams_with_par

from .crf import add_crf_backend_flags, check_crf_flags, crf_driver, resolve_crf_backend
from utils.distributed import barrier, cleanup, init_distributed
from utils.cli import ArgumentParser, add_numbers
from .inference import load_model
from .script_common import (add_data_and_model_flags, add_device_flags, check_model_path, output_folder, resolve_dataset_model,
                            script_logger, split_lists)
from utils.metric import ConfusionMatrix, ThresholdSweep, format_table
from utils.precision import autocast, resolve_amp
from utils.results import write_results
from .validation import shard
from .visualize import label_image

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
# the tokens of one 448-pixel image at scale 1.5 with 16-pixel patches: on the CPU a pass that large
# is fastest one image at a time, while passes of small images gain from batching
TOKEN_BUDGET = 42 * 42


def default_batch_size(size: int, scales, patch: int) -> int:
    """``--batch_size`` when not given: as many images as fill :data:`TOKEN_BUDGET` at the largest
    scale, 1 to 8."""
    side = int(max(scales) * size) // patch
    return max(1, min(8, TOKEN_BUDGET // max(1, side * side)))


def get_args_parser(dataset: str) -> argparse.ArgumentParser:
    p = ArgumentParser(
        description=f"CAM and pseudo-label mIoU of a DuPL checkpoint on {DATASETS[dataset].short_title}")
    B = argparse.BooleanOptionalAction
    add_data_and_model_flags(p, dataset, "train", "split to evaluate (needs masks and labels)")
    p.add_argument("--size", type=int, default=paper("crop_size", dataset),
                   help="side of the square CAM input (the training crop)")
    add_numbers(p, "--cam_scales", default=paper("cam_scales", dataset), help="CAM scales (with flips)")
    p.add_argument("--bkg_thre", type=float, default=paper("bkg_thre", dataset),
                   help="background threshold of training-time validation and of the pseudo labels")
    add_numbers(p, "--thresholds", default=DEFAULT_THRESHOLDS, help="background thresholds of the sweep")
    p.add_argument("--par", action=B, default=True, help="score the PAR-refined pseudo labels")
    p.add_argument("--crf", action=B, default=False, help="score CAM labels refined by dense CRF")
    add_crf_backend_flags(p)
    p.add_argument("--save_cams", action=B, default=False,
                   help="write cams/<id>.npz: present classes' CAMs (float16, mask size) of both students")
    p.add_argument("--save_labels", action=B, default=False, help="write label PNGs per column")
    p.add_argument("--work_dir", help="output folder (default: a new folder <checkpoint folder>/cam_<infer_set>, "
                   "numbered _2, _3... when that exists)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per pass through a student (default: as many as fill the tokens of one "
                   "448-pixel image at scale 1.5, at most 8: 1 at --size 448, 4 at 224, 8 at 128); on the CPU an "
                   "image's CAMs do not depend on it (tested); a GPU's kernels may move their last bits")
    add_device_flags(p)
    return p


def _check(args) -> None:
    check_model_path(args.model_path, "the checkpoint whose CAMs to evaluate")
    if args.size < 32 or args.size % 16:
        raise UserError(f"--size {args.size} must be a multiple of 16 and at least 32")
    if not args.thresholds or not all(0 < t < 1 for t in args.thresholds):
        raise UserError("--thresholds must be values strictly between 0 and 1, e.g. 0.3,0.4,0.5")
    if not 0 < args.bkg_thre < 1:
        raise UserError(f"--bkg_thre {args.bkg_thre} must be strictly between 0 and 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size} must be at least 1")
    if not args.cam_scales or any(s <= 0 for s in args.cam_scales):
        raise UserError("--cam_scales must be positive numbers, e.g. 1.0,0.5,1.5")
    check_crf_flags(args)


def best_present_class(cams: torch.Tensor, present: torch.Tensor):
    """``cams (P, H, W)`` of the ``present`` classes (0-based ids, ascending) -> the best score
    ``(H, W)`` and its class id + 1 (the lowest id on ties); an image without classes scores 0
    everywhere. The same labels as the maximum over all classes with the absent ones at 0."""
    if not len(present):
        return (torch.zeros(cams.shape[-2:], dtype=torch.float32, device=cams.device),
                torch.zeros(cams.shape[-2:], dtype=torch.long, device=cams.device))
    best, which = cams.max(dim=0)
    return best, present[which] + 1


def sweep_columns() -> list:
    """The columns scored at every threshold of the sweep: both students' CAM and aux CAM."""
    return [f"{kind}_{k}" for k in (1, 2) for kind in ("CAM", "aux_CAM")]


def label_columns(args) -> list:
    """The columns of one label map per image: both students' PAR and CRF labels, as asked."""
    kinds = (("PAR",) if args.par else ()) + (("CRF",) if args.crf else ())
    return [f"{kind}_{k}" for k in (1, 2) for kind in kinds]


class CamEvaluation:
    """This rank's part of one CAM evaluation: its shard of the split, the network, PAR, the CRF
    driver and the confusion matrices (one per threshold for the sweep's columns, one for each
    label column). :meth:`run` scores every image; :meth:`scores` reduces over all ranks;
    :meth:`report` prints and keeps the numbers."""

    def __init__(self, args, dataset: str, info, backend: str, log, ckpt):
        self.args, self.dataset, self.info, self.log = args, dataset, info, log
        self.layout, lists = split_lists(args, dataset, [args.infer_set], info.is_main, log.info)
        self.data = EvalDataset(self.layout, lists, args.infer_set,
                                stats=input_stats(args.backbone, args.input_mean, args.input_std))
        self.work = output_folder(args.work_dir, "--work_dir", info.is_main, args.model_path,
                                  f"cam_{args.infer_set}")
        self.net = load_model(ckpt, args.backbone, args.num_classes, args.aux_layer, info.device,
                              source=args.model_path)
        self.step = ckpt.get("step") if isinstance(ckpt, dict) else None
        self.par = PAR().to(info.device)
        if args.batch_size is None:
            args.batch_size = default_batch_size(args.size, args.cam_scales, self.net.students[0].patch_size)
        c, self.thresholds = args.num_classes, list(args.thresholds)
        self.sweep_cols, self.label_cols = sweep_columns(), label_columns(args)
        self.sweep = {col: ThresholdSweep(c, self.thresholds, info.device) for col in self.sweep_cols}
        self.mats = {col: ConfusionMatrix(c, info.device) for col in self.label_cols}
        if info.is_main:
            for sub in (["cams"] if args.save_cams else []) + (
                    ["labels"] + [f"labels/{col}" for col in self.sweep_cols + self.label_cols]
                    if args.save_labels else []):
                make_output_dir(os.path.join(self.work, sub))
        barrier()
        self.at = self.thresholds.index(args.bkg_thre)
        self.threshold = torch.tensor(args.bkg_thre, dtype=torch.float32, device=info.device)
        self.crf = crf_driver(args, backend, info.device)

    def run(self) -> None:
        """Score every image of this rank's shard, ``--batch_size`` at a time, then refine the CRF
        images still queued; ``seconds`` keeps how long it took."""
        start = time.perf_counter()
        part = shard(self.data, self.info.rank, self.info.world_size)
        iterator = DataLoader(part, batch_size=None, num_workers=self.args.num_workers)
        if self.info.is_main:
            from tqdm import tqdm
            iterator = tqdm(iterator, total=len(part), desc="CAMs", mininterval=5, file=sys.stderr)
        batch = []
        for idx, item in zip(part.indices, iterator):
            batch.append((idx, *item))
            if len(batch) == self.args.batch_size:
                self.images(batch)
                batch = []
        if batch:
            self.images(batch)
        self.crf.close()
        self.seconds = time.perf_counter() - start

    def images(self, batch: list) -> None:
        """Images ``(index, id, image, mask, label)`` at ``--size`` squared: each student's
        multi-scale CAM and aux CAM and its PAR labels for all of them in one pass, then every
        image scored (:meth:`score`). An image's CAMs do not depend on the others in its batch."""
        args, device = self.args, self.info.device
        x = torch.cat([F.interpolate(image[None].to(device), size=(args.size, args.size), mode="bilinear",
                                     align_corners=False) for _, _, image, _, _ in batch])
        labels = torch.stack([label for *_, label in batch])
        most = 1 + int((labels > 0).sum(dim=1).max())       # background + the most present classes
        labels = labels.to(device)
        maps, pars = [], []
        for student in self.net.students:
            with record_function("cam_eval/cams"), autocast(device, args.amp):
                cam, cam_aux = multiscale_cam(student, x, args.cam_scales)
            maps.append((cam.float(), cam_aux.float()))
            pars.append(self.par_labels(x, maps[-1][0], labels, most) if args.par else None)
        for i, (idx, img_id, _, mask, _) in enumerate(batch):
            self.score(i, idx, img_id, mask.to(device), labels[i], maps, pars)

    def par_labels(self, x, cam, labels, most: int) -> torch.Tensor:
        """The PAR-refined pseudo labels ``(B, size, size)`` of a batch at ``--bkg_thre`` (no
        uncertain pixels), the channels compacted to background + the ``most`` present classes."""
        args = self.args
        box = torch.tensor([[0, args.size, 0, args.size]], device=x.device).expand(x.shape[0], 4)
        image = self.net.input_stats.denormalize(x)      # the 8-bit image / 255, as in training
        with record_function("cam_eval/par"):
            return refine_cams_with_par(image, cam * labels[:, :, None, None], labels, args.bkg_thre,
                                        args.bkg_thre, box, self.par, max_channels=most)

    def score(self, i: int, idx: int, img_id: str, gt, label, maps: list, pars: list) -> None:
        """Image ``i`` of the batch: each student's CAM and aux CAM, resized to the mask (present
        classes only), scored over the sweep, its PAR label scored and its CRF label queued; the
        present classes' maps written on request."""
        args, size = self.args, tuple(gt.shape)
        present = torch.nonzero(label).flatten()
        rgb = self.data.raw_image(idx) if args.crf else None
        saved: Dict[str, np.ndarray] = {}
        for k, ((cam, cam_aux), par) in enumerate(zip(maps, pars), 1):
            with record_function("cam_eval/score"):
                for kind, m in (("CAM", cam), ("aux_CAM", cam_aux)):
                    full = F.interpolate(m[i:i + 1], size=size, mode="bilinear", align_corners=False)[0, present]
                    best, cls = best_present_class(full, present)
                    self.sweep[f"{kind}_{k}"].update(gt, best, cls)
                    saved[f"{kind}_{k}"] = full.half().cpu().numpy()
                    self.save_label(f"{kind}_{k}", img_id, torch.where(best > self.threshold, cls, 0))
                    if kind == "CAM":
                        cam_full = full
                if par is not None:
                    pseudo = F.interpolate(par[i][None, None].float(), size=size, mode="nearest")[0, 0].long()
                    self.mats[f"PAR_{k}"].update(gt, pseudo)
                    self.save_label(f"PAR_{k}", img_id, pseudo)
            if args.crf:
                self.crf_labels(k, img_id, cam_full, present, rgb, gt)
        if args.save_cams:
            save_npz(output_path(os.path.join(self.work, "cams"), img_id + ".npz"),
                     classes=present.cpu().numpy() + 1, **saved)

    def crf_labels(self, k: int, img_id: str, full, present, rgb, gt) -> None:
        """Queue student ``k``'s CAM at the mask size (``full``: the present classes' maps; the
        background at ``--bkg_thre``; normalised) for the dense CRF; :meth:`crf_done` scores the
        labels."""
        scores = torch.cat([torch.full_like(full[:1], self.args.bkg_thre), full])
        probs = (scores / scores.sum(0, keepdim=True).clamp(min=1e-5)).float()
        classes = torch.cat([torch.zeros(1, dtype=torch.long), present.cpu() + 1])
        self.crf.submit((rgb, probs, functools.partial(self.crf_done, f"CRF_{k}", img_id, classes, gt)))

    def crf_done(self, column: str, img_id: str, classes: torch.Tensor, gt: torch.Tensor,
                 refined: np.ndarray) -> None:
        label = classes[torch.from_numpy(refined.astype(np.int64))].to(self.info.device)
        self.mats[column].update(gt, label)
        self.save_label(column, img_id, label)

    def save_label(self, column: str, img_id: str, label: torch.Tensor) -> None:
        if self.args.save_labels:
            save_image(output_path(os.path.join(self.work, "labels", column), img_id + ".png"),
                       label_image(label.byte().cpu().numpy(), palette=True))

    def scores(self):
        """Over all ranks: each column's scores at ``--bkg_thre``, the sweep's mIoU curves and each
        sweep column's best ``(threshold, mIoU)``."""
        for counts in list(self.sweep.values()) + list(self.mats.values()):
            counts.reduce_from_all_processes()
        sweep = {col: counts.matrices() for col, counts in self.sweep.items()}
        scores = {col: cms[self.at].compute() for col, cms in sweep.items()}
        scores.update({col: cm.compute() for col, cm in self.mats.items()})
        curves = {col: [cm.compute()["miou"] for cm in cms] for col, cms in sweep.items()}
        best = {col: (self.thresholds[int(np.nanargmax(v))], float(np.nanmax(v))) for col, v in curves.items()}
        return scores, curves, best

    def report(self, scores: dict, curves: dict, best: dict) -> None:
        """The table and the sweep's lines, printed and written (``results.json``, ``results.txt``)
        by the main rank."""
        args = self.args
        present_rows = scores[self.sweep_cols[0]]["present"]
        table = (f"{args.infer_set}: CAMs at {args.size}x{args.size}, scales {list(args.cam_scales)} + flip, "
                 f"background threshold {args.bkg_thre}\n"
                 + format_table({col: s["iou"] for col, s in scores.items()}, self.layout.display_names,
                                present_rows))
        lines = [f"{col}: mIoU {100 * scores[col]['miou']:.2f} at {args.bkg_thre}; best "
                 f"{100 * m:.2f} at {t}" for col, (t, m) in best.items()]
        text = table + "\n" + "\n".join(lines)
        if not self.info.is_main:
            return
        self.log.info("\n" + text)
        write_results(self.work, scores, self.layout.display_names, text, script=f"eval_cam_{self.dataset}",
                      split=args.infer_set, num_images=len(self.data), input_size=args.size,
                      cam_scales=list(args.cam_scales), bkg_thre=args.bkg_thre,
                      threshold_sweep={col: {"thresholds": self.thresholds, "miou": v} for col, v in curves.items()},
                      best_threshold={col: {"threshold": t, "miou": m} for col, (t, m) in best.items()},
                      checkpoint=os.path.abspath(args.model_path), checkpoint_step=self.step,
                      amp=args.amp, batch_size=args.batch_size, seconds=round(self.seconds, 3))
        self.log.info(f"{len(self.data)} images in {self.seconds:.1f} s; results in {self.work}")


@torch.no_grad()
def evaluate_cams(args, dataset: str) -> Dict[str, dict]:
    """Run the CAM evaluation; returns ``{"scores", "best", "curves"}`` (see :meth:`CamEvaluation.scores`)
    and ``"seconds"``, this rank's time for its images."""
    _check(args)
    if args.bkg_thre not in args.thresholds:
        args.thresholds = tuple(sorted(set(args.thresholds) | {args.bkg_thre}))
    ckpt = resolve_dataset_model(args, dataset)
    info = init_distributed(cpu=args.cpu, join_timeout_s=args.join_timeout)
    backend = resolve_crf_backend(args.crf_backend, info.device)
    log = script_logger("dupl.cam_eval", info.is_main)
    args.amp = resolve_amp(args.amp, info.device, log.warning)
    try:
        run = CamEvaluation(args, dataset, info, backend, log, ckpt)
        del ckpt
        run.run()
        scores, curves, best = run.scores()
        run.report(scores, curves, best)
        barrier()
        return {"scores": scores, "best": best, "curves": curves, "seconds": run.seconds,
                "batch_size": args.batch_size}
    finally:
        cleanup()
