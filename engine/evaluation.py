"""Multi-scale + CRF evaluation shared by ``eval_seg_voc.py`` and ``eval_seg_coco_ddp.py``.

1. Every rank infers its shard of the split (every ``world_size``-th image): both students'
   multi-scale logits (VOC or COCO rule, :mod:`engine.inference`), scored for student 1,
   student 2 and their ensemble without CRF.
2. The network outputs behind both students' logits are saved before any resizing
   (``logits/<id>.npz``, float32; :func:`engine.inference.load_logits` rebuilds any branch at full
   resolution), with the index and colour PNGs of the ``--branch`` prediction (``prediction/``,
   ``prediction_color/``).
3. Dense CRF (``--crf``) refines the float32 probabilities of each image while the next images
   are inferred, in ``--crf_workers`` pydensecrf processes or in batches of ``--crf_batch``
   images on the evaluation's device (``--crf_backend``), and writes ``crf/`` and ``crf_color/``.
   With ``--branch best_on_gt`` (the paper's protocol) the student is chosen after inference on
   the confusion matrices of all ranks, and its predictions and CRF are made from the saved logits.
4. Confusion matrices are summed over ranks (never lists of predictions), so the printed scores
   equal a one-process run's. On a split without masks (VOC test) only predictions are written;
   otherwise the scores go to ``results.json`` and the tables to ``results.txt``.
"""
import argparse
import logging
import os
import sys
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.layout import DATASETS, layout_kind
from datasets.readers import read_image, read_mask
from datasets.segmentation import EvalDataset
from model.backbone import input_stats
from model.settings import paper
from utils.safe_io import make_output_dir, output_path, save_image

from .crf import (add_crf_backend_flags, check_crf_flags, crf_driver, probs_from_logits,
                  resolve_crf_backend)
from utils.distributed import barrier, cleanup, init_distributed
from utils.precision import autocast, resolve_amp
from utils.errors import UserError
from .inference import (BRANCHES, coco_msc_logits, ensemble_probs,
                        load_logits, load_model, merge_voc, save_logits, select_branch,
                        to_size, voc_raw_logits)
from .script_common import (add_data_and_model_flags, add_device_flags, check_model_path, output_folder, resolve_dataset_model,
                            script_logger, split_lists)
from utils.cli import ArgumentParser, add_numbers
from utils.metric import ConfusionMatrix, format_table
from utils.results import write_results
from .validation import shard
from .visualize import label_image

COLUMNS = ("Seg_1", "Seg_2", "Ensemble")
BEST_ON_GT = "best_on_gt"


def best_student_on_gt(scores: Dict[str, dict]) -> str:
    """The paper's rule: the student (``"1"`` or ``"2"``) whose ``Seg`` mIoU on the evaluated
    split's ground truth is higher (student 1 on a tie). ``scores`` must come from confusion
    matrices reduced over all ranks."""
    return "1" if scores["Seg_1"]["miou"] >= scores["Seg_2"]["miou"] else "2"


def get_args_parser(dataset: str) -> argparse.ArgumentParser:
    voc = layout_kind(dataset) == "voc"
    p = ArgumentParser(
        description=f"Multi-scale + CRF evaluation of a DuPL checkpoint on {DATASETS[dataset].short_title}")
    B = argparse.BooleanOptionalAction
    add_data_and_model_flags(p, dataset, *(("val", "split to evaluate: val, or test (no masks)") if voc
                                           else ("val_part", "val_part (5,000 images) or val")))
    add_numbers(p, "--scales", default=paper("eval_scales", dataset),
                help="inference scales (with flips)")
    p.add_argument("--branch", default="ensemble", choices=BRANCHES + (BEST_ON_GT,),
                   help="prediction saved and refined by CRF: student 1, student 2, the mean of "
                   "both students' softmax (a fixed rule), or best_on_gt: the paper's protocol, the "
                   "student with the higher mIoU on this split's ground truth (needs masks; the "
                   "choice looks at the labels it is scored on)")
    p.add_argument("--crf", action=B, default=True, help="dense CRF post-processing")
    p.add_argument("--no_crf", dest="crf", action="store_false", help="alias of --no-crf")
    p.add_argument("--crf_workers", type=int, default=None,
                   help="pydensecrf worker processes per rank (default: the cores this process may "
                   "use, shared by the ranks of a machine)")
    add_crf_backend_flags(p)
    p.add_argument("--work_dir", help="output folder (default: a new folder <checkpoint folder>/eval_<infer_set>, "
                   "numbered _2, _3... when that exists)")
    add_device_flags(p)
    return p


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (which SLURM and taskset set), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def save_png(path: str, label: np.ndarray, palette: bool = False) -> None:
    """A label map as an index (or colour) PNG, written without following a planted link."""
    save_image(path, label_image(label, palette))


def crf_inputs(job) -> Tuple[np.ndarray, object]:
    """The uint8 image and the probabilities ``(C, H, W)`` of a CRF job ``(id, image path, probs,
    mask path or None, num_classes, out dir, colour dir)``: ``probs`` is the float32 softmax (an
    array, or a tensor on the evaluation's device) or ``(path, branch)`` of a file written by
    :func:`engine.inference.save_logits`."""
    image = read_image(job[1])
    probs = job[2]
    if isinstance(probs, tuple):
        probs = probs_from_logits(load_logits(*probs), image.shape[:2])
    return image, probs


def crf_outputs(job, label: np.ndarray) -> Optional[np.ndarray]:
    """Write a job's CRF labels as index and colour PNGs; the flattened confusion counts
    (``C*C``) when the job has a mask."""
    img_id, _, _, mask_path, num_classes, out_dir, color_dir = job
    save_png(output_path(out_dir, img_id + ".png"), label)
    save_png(output_path(color_dir, img_id + ".png"), label, palette=True)
    if mask_path is None:
        return None
    gt = read_mask(mask_path, num_classes).astype(np.int64).ravel()
    keep = gt < num_classes
    return np.bincount(gt[keep] * num_classes + label.ravel()[keep].astype(np.int64),
                       minlength=num_classes * num_classes)


def crf_stream(args, device: torch.device):
    """The CRF driver of ``--crf_backend`` on ``device`` (``args.crf_backend`` is resolved): jobs
    of :func:`crf_inputs`, finished by :func:`crf_outputs` (in the pydensecrf workers, or in two
    background threads beside the torch CRF)."""
    args.crf_backend = resolve_crf_backend(args.crf_backend, device)
    return crf_driver(args, args.crf_backend, device, crf_inputs, crf_outputs, workers=args.crf_workers,
                      threads=2)


def check_eval_flags(args, dataset: str):
    """Refuse a missing checkpoint, bad CRF flags or another dataset's checkpoint in one line, before
    anything is written; fill ``--crf_workers`` and the model flags. Returns the read checkpoint."""
    check_model_path(args.model_path, "the checkpoint to evaluate")
    if args.crf_workers is None:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        args.crf_workers = max(1, usable_cores() // local_ranks)
    if args.crf_workers < 1:
        raise UserError("--crf_workers must be >= 1")
    check_crf_flags(args)
    return resolve_dataset_model(args, dataset)


def make_output_folders(work: str, is_main: bool) -> Dict[str, str]:
    """``{name: folder}`` of the evaluation's outputs under ``work``, created by the main rank; a
    sub-folder that is a link (to elsewhere) is refused."""
    dirs = {k: os.path.join(work, k) for k in ("logits", "prediction", "prediction_color", "crf", "crf_color")}
    if is_main:
        for d in dirs.values():
            make_output_dir(d)
    barrier()
    return dirs


def multiscale_logits(net, image: torch.Tensor, dataset: str, scales, device: torch.device, amp: bool):
    """Both students' network outputs for ``image (3, H, W)`` (what :func:`save_logits` keeps) and
    their multi-scale logits (VOC: ``(1, C, H, W)``; COCO: at the token grid, float32)."""
    x = image[None].to(device)
    size = tuple(image.shape[-2:])
    voc_rule = layout_kind(dataset) == "voc"
    with autocast(device, amp):
        if voc_rule:
            raw = voc_raw_logits(net, x, scales)
        else:
            raw = coco_msc_logits(net, x, scales=scales)
    logits = merge_voc(raw, size) if voc_rule else [l.float() for l in raw]
    return raw, logits


def column_predictions(logits, size) -> list:
    """The ``(H, W)`` predictions of the columns ``Seg_1``, ``Seg_2`` and ``Ensemble`` (the argmax of
    the mean of both students' softmax) from both students' logits, resized to ``size``."""
    full = [to_size(l, size) for l in logits]
    return [full[0].argmax(1)[0], full[1].argmax(1)[0],
            ensemble_probs(full).argmax(1)[0]]


class SegEvaluation:
    """This rank's part of one evaluation: its shard of the split, the output folders, the CRF stream,
    the network and the confusion matrices of the columns without CRF.

    :meth:`infer` scores and saves every image of the shard; :meth:`scores` reduces the matrices
    over all ranks; :meth:`choose_on_gt` makes the ``best_on_gt`` predictions once scored;
    :meth:`crf_scores` waits for the CRF and scores it; :meth:`write` keeps the numbers."""

    def __init__(self, args, dataset: str, info, log: logging.Logger, ckpt):
        self.args, self.dataset, self.info, self.log = args, dataset, info, log
        self.layout, lists = split_lists(args, dataset, [args.infer_set], info.is_main, log.info)
        self.with_masks = not (layout_kind(dataset) == "voc" and args.infer_set == "test")
        self.deferred = args.branch == BEST_ON_GT
        if self.deferred and not self.with_masks:
            raise UserError(f"--branch {BEST_ON_GT} chooses the student on ground truth, which the "
                            f"{args.infer_set} split does not have; use --branch 1, 2 or ensemble")
        self.data = EvalDataset(self.layout, lists, args.infer_set, with_masks=self.with_masks,
                                with_labels=False,
                                stats=input_stats(args.backbone, args.input_mean, args.input_std))
        self.work = output_folder(args.work_dir, "--work_dir", info.is_main, args.model_path,
                                  f"eval_{args.infer_set}")
        self.dirs = make_output_folders(self.work, info.is_main)
        # pydensecrf's workers start before the model takes the GPU; they (or the torch CRF's
        # batches on the device) refine each image's float32 probabilities while the next images
        # are inferred
        self.stream = crf_stream(args, info.device) if args.crf else None
        if self.stream is not None:
            log.info(f"dense CRF: {args.crf_backend} on "
                     + (f"{info.device.type}, {self.stream.batch} image(s) per batch"
                        if args.crf_backend == "torch" else f"{args.crf_workers} CPU worker(s)"))
        self.net = load_model(ckpt, args.backbone, args.num_classes, args.aux_layer, info.device,
                              source=args.model_path)
        self.step = ckpt.get("step") if isinstance(ckpt, dict) else None
        self.num_classes = args.num_classes
        self.mats = {k: ConfusionMatrix(self.num_classes, info.device) for k in COLUMNS}
        self.part = shard(self.data, info.rank, info.world_size)

    def infer(self) -> None:
        """Infer, score and save every image of this rank's shard (see :meth:`infer_image`)."""
        loader = DataLoader(self.part, batch_size=None, num_workers=self.args.num_workers)
        iterator = loader
        if self.info.is_main:
            from tqdm import tqdm
            iterator = tqdm(loader, total=len(self.part), desc="inference", mininterval=5, file=sys.stderr)
        for img_id, image, mask, _ in iterator:
            self.infer_image(img_id, image, mask)

    def infer_image(self, img_id: str, image: torch.Tensor, mask: torch.Tensor) -> None:
        """Multi-scale logits of one image; its three predictions scored; its network outputs saved;
        unless the student is chosen on ground truth later, the ``--branch`` prediction saved and
        its float32 probabilities handed to the CRF."""
        args, device = self.args, self.info.device
        size = tuple(image.shape[-2:])
        raw, logits = multiscale_logits(self.net, image, self.dataset, args.scales, device, args.amp)
        preds = column_predictions(logits, size)
        if self.with_masks:
            gt = mask.to(device)
            for k, pred in zip(COLUMNS, preds):
                self.mats[k].update(gt, pred)
        save_logits(output_path(self.dirs["logits"], img_id + ".npz"), self.dataset, raw, size, args.scales)
        if self.deferred:
            return   # the student is chosen once all ranks have scored both
        chosen_pred = {"1": preds[0], "2": preds[1], "ensemble": preds[2]}[args.branch]
        self.save_prediction(img_id, chosen_pred.byte().cpu().numpy())
        if self.stream is not None:
            chosen = select_branch(logits, args.branch)
            probs = to_size(chosen, size).softmax(1)[0].float()
            if args.crf_backend != "torch":
                probs = probs.cpu().numpy()
            self.stream.submit(self.crf_job(img_id, probs))

    def save_prediction(self, img_id: str, pred: np.ndarray) -> None:
        save_png(output_path(self.dirs["prediction"], img_id + ".png"), pred)
        save_png(output_path(self.dirs["prediction_color"], img_id + ".png"), pred, palette=True)

    def crf_job(self, img_id: str, probs) -> tuple:
        """The CRF job of one image (see :func:`crf_inputs`)."""
        split = self.args.infer_set
        mask_path = self.layout.mask_path(split, img_id) if self.with_masks else None
        return (img_id, self.layout.image_path(split, img_id), probs, mask_path, self.num_classes,
                self.dirs["crf"], self.dirs["crf_color"])

    def scores(self) -> Tuple[Dict[str, dict], list]:
        """The columns' scores over all ranks (empty without masks) and their table."""
        for m in self.mats.values():
            m.reduce_from_all_processes()
        if not self.with_masks:
            return {}, []
        results = {k: m.compute() for k, m in self.mats.items()}
        table = (f"{self.args.infer_set}: multi-scale {list(self.args.scales)} + flip, no CRF\n"
                 + format_table({k: v["iou"] for k, v in results.items()}, self.layout.display_names,
                                results["Seg_1"]["present"]))
        self.log.info(table)
        return results, [table]

    def choose_on_gt(self, results: Dict[str, dict]) -> str:
        """``--branch best_on_gt``: the student of :func:`best_student_on_gt`; its predictions are
        saved and handed to the CRF from the saved logits of this rank's images."""
        branch = best_student_on_gt(results)
        self.log.info(f"--branch {BEST_ON_GT}: student {branch} chosen by its mIoU on the "
                      f"{self.args.infer_set} ground truth (Seg_1 {100 * results['Seg_1']['miou']:.2f}, "
                      f"Seg_2 {100 * results['Seg_2']['miou']:.2f}, all ranks); this choice looks at "
                      "the labels it is scored on, as the paper's evaluation does")
        for idx in self.part.indices:
            img_id = self.data.ids[idx]
            path = output_path(self.dirs["logits"], img_id + ".npz")
            logits = load_logits(path, branch)
            self.save_prediction(img_id, logits.argmax(0).astype(np.uint8))
            if self.stream is not None:
                self.stream.submit(self.crf_job(img_id, (path, branch)))
        return branch

    def crf_scores(self, branch: str, results: Dict[str, dict], tables: list) -> None:
        """Wait for the CRF of this rank's images; with masks, add the scores of ``CRF_<branch>``
        over all ranks to ``results`` and its table to ``tables``."""
        counts = self.stream.close()
        if not self.with_masks:
            return
        c = self.num_classes
        total = np.zeros(c * c, dtype=np.int64)
        for cnt in counts:
            total += cnt
        crf_mat = ConfusionMatrix(c, self.info.device)
        crf_mat.add_counts(total.reshape(c, c))
        crf_mat.reduce_from_all_processes()
        key = f"CRF_{branch}"
        results[key] = crf_mat.compute()
        tables.append(f"{self.args.infer_set}: branch {branch} + dense CRF\n"
                      + format_table({key: results[key]["iou"]}, self.layout.display_names,
                                     results[key]["present"]))
        self.log.info(tables[-1])

    def write(self, results: Dict[str, dict], tables: list, branch: str) -> None:
        """``results.json`` and ``results.txt`` (with masks) and the closing line, on the main rank."""
        args = self.args
        summary = ", ".join(f"{k} {100 * v['miou']:.2f}" for k, v in results.items())
        if results:
            write_results(self.work, results, self.layout.display_names, "\n\n".join(tables),
                          script=f"eval_seg_{self.dataset}", split=args.infer_set,
                          num_images=len(self.data), scales=list(args.scales), branch=branch,
                          branch_rule=args.branch, crf=bool(args.crf),
                          checkpoint=os.path.abspath(args.model_path), checkpoint_step=self.step)
        self.log.info(f"{len(self.data)} images; predictions in {self.work}"
                      + (f"; mIoU: {summary}" if summary else ""))


def evaluate(args, dataset: str) -> Dict[str, dict]:
    """Run the evaluation; returns ``{column: scores}`` (empty without masks)."""
    ckpt = check_eval_flags(args, dataset)
    info = init_distributed(cpu=args.cpu, join_timeout_s=args.join_timeout)
    log = script_logger("dupl.eval", info.is_main)
    args.amp = resolve_amp(args.amp, info.device, log.warning)
    try:
        run = SegEvaluation(args, dataset, info, log, ckpt)
        del ckpt
        run.infer()
        results, tables = run.scores()
        branch = run.choose_on_gt(results) if run.deferred else args.branch
        if run.stream is not None:
            run.crf_scores(branch, results, tables)
        barrier()
        if info.is_main:
            run.write(results, tables, branch)
        return results
    finally:
        cleanup()
