"""What the entry-point scripts share, in one place: the dataset and model flags, the
``--model_path`` check and the model flags read from the checkpoint, the dataset layout and split
lists of the flags, the logger, the output folder, the device, and the image inputs and output
names of ``infer.py`` and ``visualize_cams.py``. A script builds on these and keeps its own
``main``; no script imports another."""
import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from datasets.classes import COCO_CLASSES, VOC_DISPLAY_NAMES
from datasets.layout import DatasetLayout, dataset_layout, layout_kind
from datasets.lists import ensure_lists
from utils.distributed import barrier, from_main_rank
from utils.errors import UserError
from utils.cli import add_launcher_flags
from utils.precision import add_amp_flag
from utils.safe_io import fresh_dir, make_output_dir, open_for_append

from model.settings import default_model

from .run_state import resolve_model_flags

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TIMESTAMP_FORMAT = "%(asctime)s - %(message)s"


def add_model_path_flag(p, required: bool) -> None:
    """``--model_path``: required by the parser, or (``required=False``) left for
    :func:`check_model_path` to refuse in one line that says what the checkpoint is for."""
    if required:
        p.add_argument("--model_path", required=True, help="checkpoint (this project's or the original's)")
    else:
        p.add_argument("--model_path", help="checkpoint (this project's or the original's; required)")


def add_data_and_model_flags(p, dataset: str, infer_default: str, infer_help: str) -> None:
    """The dataset, split, list folder, checkpoint and model flags every evaluation script takes."""
    if layout_kind(dataset) == "voc":
        p.add_argument("--data_folder", help="the VOC2012 folder (required)")
    else:
        p.add_argument("--img_folder", "--data_folder", dest="img_folder",
                       help="COCO image folder with train2014/ and val2014/ (required)")
        p.add_argument("--label_folder", help="COCO mask folder with train2014/ and val2014/ (default: "
                       "<img_folder>/SegmentationClass, else <img_folder>/../SegmentationClass)")
    p.add_argument("--infer_set", default=infer_default, help=infer_help)
    p.add_argument("--list_folder", help="split lists (default: <data>_lists, derived when missing)")
    add_model_path_flag(p, required=False)
    add_model_flags(p, dataset)


def add_model_flags(p, dataset: str) -> None:
    """``--backbone``, ``--num_classes``, ``--aux_layer``: taken from the checkpoint when left out."""
    d = default_model(dataset)
    p.add_argument("--backbone", default=None,
                   help=f"backbone the checkpoint was trained with (default: the checkpoint's, else "
                   f"{d['backbone']}; DeiT-B and ViT-B share a layout)")
    p.add_argument("--num_classes", type=int, default=None,
                   help=f"classes incl. background (default: the checkpoint's, else {d['num_classes']})")
    p.add_argument("--aux_layer", type=int, default=None,
                   help=f"block of the aux classifier (default: the checkpoint's, else {d['aux_layer']})")


def add_device_flags(p) -> None:
    """The evaluations' last flags: ``--amp``, ``--num_workers``, ``--cpu`` and the launcher's."""
    add_amp_flag(p)
    p.add_argument("--num_workers", type=int, default=2, help="data loader workers")
    p.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=False,
                   help="run on the CPU even when a GPU is present")
    add_launcher_flags(p)


def check_model_path(path: Optional[str], purpose: str) -> None:
    """Refuse a missing ``--model_path`` (``purpose`` says what the checkpoint is for) or one that
    names no file, in one line, before anything is read or written."""
    if not path:
        raise UserError(f"--model_path is required: {purpose}")
    if not os.path.isfile(path):
        raise UserError(f"--model_path {path} does not exist")


def resolve_dataset_model(args, dataset: str) -> dict:
    """Read ``--model_path`` and fill the model flags left out (the checkpoint's, else
    ``default_model(dataset)``); a checkpoint of another dataset is refused in one line before
    anything is written. Returns the checkpoint object."""
    given = args.num_classes
    ckpt = resolve_model_flags(args, default_model(dataset))
    expected = default_model(dataset)["num_classes"]
    if given is None and args.num_classes != expected:
        raise UserError(f"{args.model_path} was trained with {args.num_classes} classes but {dataset} "
                        f"has {expected}; use the script of the dataset it was trained on")
    return ckpt


def layout_from_flags(args, dataset: str) -> DatasetLayout:
    """The dataset layout of the flags ``--data_folder`` / ``--img_folder`` / ``--label_folder``
    (those a script has) and ``--num_classes``."""
    return dataset_layout(dataset, getattr(args, "data_folder", None), getattr(args, "img_folder", None),
                          getattr(args, "label_folder", None), args.num_classes)


def split_lists(args, dataset: str, splits: List[str], is_main: bool, log) -> Tuple[DatasetLayout, str]:
    """The dataset layout of the flags and the list folder holding ``splits``, derived by the main
    rank first when they are missing (``log`` reports it); every rank gets the folder."""
    layout = layout_from_flags(args, dataset)
    if is_main:
        ensure_lists(layout, args.list_folder, splits, log=log)
    barrier()
    return layout, ensure_lists(layout, args.list_folder, splits, log=log)


def script_logger(name: str, is_main: bool, fmt: str = TIMESTAMP_FORMAT, log_file: Optional[str] = None,
                  every_rank: bool = True) -> logging.Logger:
    """The logger ``name``, set up afresh: INFO on the main rank, warnings only elsewhere. Lines
    formatted by ``fmt`` go to stdout (on every rank, or only on the main rank without
    ``every_rank``) and, on the main rank, are appended to ``log_file`` without following a link
    planted there. It does not propagate (not also through the training logger ``dupl``, whose
    stream may be gone)."""
    log = logging.getLogger(name)
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    streams = [sys.stdout] if is_main or every_rank else []
    if is_main and log_file:
        streams.append(open_for_append(log_file))
    formatter = logging.Formatter(fmt)
    for stream in streams:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return log


def output_folder(chosen: Optional[str], flag: str, is_main: bool = True, checkpoint: Optional[str] = None,
                  name: Optional[str] = None) -> str:
    """The folder a script writes to: ``chosen`` (the value of ``flag``) as given (it may be a
    link: the user chose it), else a folder made now next to ``checkpoint``, ``name`` or
    ``name_2``, ``name_3``... when that exists (a downloaded run folder's own outputs, or a link
    planted under that name, are never written through or over). Made by the main rank; every
    rank gets its path."""
    if chosen:
        if is_main:
            make_output_dir(chosen, flag, allow_link=True)
        return chosen
    work = fresh_dir(os.path.dirname(os.path.abspath(checkpoint)), name) if is_main else None
    return from_main_rank(work)


def pick_device(cpu: bool) -> torch.device:
    """The GPU when there is one and ``--cpu`` is not given, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def class_names(num_classes: int) -> Tuple[str, ...]:
    """Printable class names: VOC's for 21 classes, COCO's for 81, else ``class <i>``."""
    if num_classes == len(VOC_DISPLAY_NAMES):
        return VOC_DISPLAY_NAMES
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return tuple(["background"] + [f"class {i}" for i in range(1, num_classes)])


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Image files named by ``inputs`` (files, or folders whose files are taken in name order,
    not recursively) and the skipped non-image files."""
    images, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            files = [os.path.join(item, n) for n in sorted(os.listdir(item))]
            files = [f for f in files if os.path.isfile(f)]
        elif os.path.isfile(item):
            files = [item]
        else:
            raise UserError(f"--input {item} does not exist")
        for f in files:
            (images if f.lower().endswith(IMAGE_EXTENSIONS) else skipped).append(f)
    return images, skipped


def output_names(paths: Sequence[str]) -> List[str]:
    """Output stem of each image: its file name without extension, with the extension appended
    (``a_png``) when two inputs share a stem, and a counter when that still collides."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names, used = [], set()
    for p, stem in zip(paths, stems):
        name = stem
        if stems.count(stem) > 1:
            name = f"{stem}_{os.path.splitext(p)[1].lstrip('.').lower()}"
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names.append(name)
    return names
