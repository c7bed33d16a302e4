"""Derive split lists and image-level labels from the dataset itself.

    python -m datasets.prepare --dataset voc --data_folder VOC2012 [--list_folder DIR]
    python -m datasets.prepare --dataset coco --img_folder COCO --label_folder COCO/SegmentationClass

Writes to ``--list_folder`` (default: ``<data folder>_lists`` next to the data) the split lists
and ``cls_labels.npz`` that are not there yet (``--overwrite`` replaces them). The files and how
each split is derived are :mod:`datasets.lists`'s, which the training and evaluation scripts use
to derive a missing list themselves; this module is the command only.
"""
import argparse
import os
import sys

from utils.errors import exit_on_user_error
from utils.help_format import DefaultsHelpFormatter

from .layout import coco_layout, voc_layout
from .lists import prepare_coco, prepare_voc


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--dataset", choices=("voc", "coco"), required=True, help="dataset kind")
    p.add_argument("--data_folder", help="VOC: the VOC2012 folder; COCO: alias of --img_folder")
    p.add_argument("--img_folder", help="COCO: folder with train2014/ and val2014/ images")
    p.add_argument("--label_folder", help="COCO: folder with train2014/ and val2014/ index masks "
                   "(default: SegmentationClass inside or next to --img_folder)")
    p.add_argument("--list_folder", help="where to write the lists (default: <data folder>_lists)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes reading masks")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace lists and labels already in --list_folder (they are kept otherwise)")
    return p


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.dataset == "voc":
        layout = voc_layout(args.data_folder)
        prepare_voc(layout, args.list_folder or layout.default_list_folder, args.workers,
                    overwrite=args.overwrite)
    else:
        layout = coco_layout(args.img_folder or args.data_folder, args.label_folder)
        prepare_coco(layout, args.list_folder or layout.default_list_folder, args.workers,
                     overwrite=args.overwrite)


if __name__ == "__main__":
    main(sys.argv[1:])
