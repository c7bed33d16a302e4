"""The training flags of ``train_final_voc.py`` and ``train_final_coco.py`` and what they mean.

:func:`get_args_parser` renders the table of settings (:mod:`model.settings`): each row a flag
with the dataset's paper value as its default and its help text; :func:`check_args` and
:func:`check_crop` turn values that cannot work into one-line errors (each row's ``valid`` range,
then the rules between flags); :func:`config_from_args` makes the method's schedule
(:mod:`model.schedule`) from the rows it owns; :func:`resolve_resume` settles ``--resume`` and
``--work_dir``.
"""
import argparse
import os

from datasets.layout import DATASETS, layout_kind
from model.schedule import DuPLConfig, paper_config
from model.settings import Setting, method_settings, training_flags

from utils.cli import ArgumentParser, add_launcher_flags, add_numbers, check, check_scales
from utils.errors import UserError

CHECKPOINT = "checkpoint.pth"            # in the run folder: the last checkpoint, resumed from
BEST_CHECKPOINT = "best.pth"             # in the run folder: the best validation score so far


def _add_flag(group, setting: Setting, dataset: str) -> None:
    """One row of the table as a flag, its default the paper's value for ``dataset``."""
    names = (f"--{setting.name}",) + setting.aliases
    default, kind = setting.value(dataset), setting.parse_kind
    if kind == "numbers":
        add_numbers(group, *names, default=default, help=setting.help)
    elif kind is bool:
        group.add_argument(*names, action=argparse.BooleanOptionalAction, default=default,
                           help=setting.help)
    elif kind is str:
        group.add_argument(*names, default=default, choices=setting.choices, help=setting.help)
    else:
        group.add_argument(*names, type=kind, default=default, choices=setting.choices, help=setting.help)


def get_args_parser(dataset: str) -> argparse.ArgumentParser:
    """The training flags of ``dataset`` (:data:`datasets.layout.DATASETS`); the defaults reproduce
    the paper's run on voc and coco."""
    p = ArgumentParser(description=f"Train DuPL on {DATASETS[dataset].title}")
    groups = {}
    for setting in training_flags(layout_kind(dataset)):
        if setting.group not in groups:
            groups[setting.group] = p.add_argument_group(setting.group)
        _add_flag(groups[setting.group], setting, dataset)
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
    """The schedule of ``dataset`` (voc or coco) with the flags' values of the method's settings;
    every boundary the flags do not name follows ``--cam_iters`` and ``--max_iters``
    (:mod:`model.schedule`)."""
    return paper_config(dataset, **{s.name: getattr(args, s.name) for s in method_settings() if s.flag})


def check_args(args, dataset: str) -> None:
    """Flag values that cannot work, as one-line errors: each setting's range, then the rules
    that tie flags together."""
    for setting in training_flags(layout_kind(dataset)):
        if setting.valid is not None:
            setting.valid.check(f"--{setting.name}", getattr(args, setting.name))
    if not 0 <= args.cam_iters <= args.gmm_iters <= args.max_iters:
        raise UserError(f"need 0 <= --cam_iters ({args.cam_iters}) <= --gmm_iters ({args.gmm_iters}) "
                        f"<= --max_iters ({args.max_iters})")
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
