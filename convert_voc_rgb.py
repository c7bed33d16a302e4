"""Convert VOC test predictions into the PNGs the official evaluation server expects (docs/usage.md#voc-server-convert_voc_rgbpy).

    python convert_voc_rgb.py --input PRED_DIR --output OUT_DIR --data_folder VOC2012
    python convert_voc_rgb.py --input PRED_DIR --output OUT_DIR --list lists/test.txt --no-tar

Every ``<id>.png`` of the test list is read from ``--input`` (single-channel class indices 0..20)
and re-saved with the same indices and name as a palette PNG (21 VOC colours, then grey) under
``OUT_DIR/results/VOC2012/Segmentation/comp6_test_cls/``; ``OUT_DIR/results.tar.gz`` holds that
``results/`` tree, ready for upload. Everything is checked before anything is written.
"""
import argparse
import os
import sys
import tarfile
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from datasets.classes import VOC_CLASSES, voc_server_palette
from datasets.layout import voc_layout
from datasets.lists import read_list
from utils.safe_io import make_output_dir, output_path, write_atomically
from datasets.readers import image_size, open_image
from utils.cli import ArgumentParser
from utils.errors import UserError, exit_on_user_error

SERVER_SUBDIR = ("results", "VOC2012", "Segmentation", "comp6_test_cls")
NUM_CLASSES = len(VOC_CLASSES)
VOC_TEST_SIZE = 1456


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="folder of <id>.png single-channel class-index predictions "
                   "(values 0..20) of the test split (required)")
    p.add_argument("--output", help="folder to write results/VOC2012/Segmentation/comp6_test_cls/ "
                   "and results.tar.gz into (required)")
    p.add_argument("--data_folder", help="the VOC2012 folder: default list "
                   "ImageSets/Segmentation/test.txt, and each prediction is checked against the "
                   "size of its JPEGImages/<id>.jpg")
    p.add_argument("--list", help="file with the test ids, one per line (overrides the default list)")
    p.add_argument("--list_folder", help="folder holding test.txt (alternative to --list)")
    p.add_argument("--tar", action=argparse.BooleanOptionalAction, default=True,
                   help="also write OUTPUT/results.tar.gz with the results/ tree for upload")
    return p


def _test_ids(args) -> List[str]:
    if args.list and args.list_folder:
        raise UserError("pass either --list or --list_folder, not both")
    if args.list:
        path = args.list
    elif args.list_folder:
        path = os.path.join(args.list_folder, "test.txt")
    elif args.data_folder:
        path = os.path.join(args.data_folder, "ImageSets", "Segmentation", "test.txt")
    else:
        raise UserError("no test list: pass --data_folder VOC2012 (uses "
                        "ImageSets/Segmentation/test.txt), --list FILE or --list_folder DIR")
    ids = list(dict.fromkeys(read_list(path)))  # drop repeated ids, keep the order
    if not ids:
        raise UserError(f"test list {path} holds no ids; pass the list of the VOC test split")
    return ids


def _read_prediction(path: str, img_id: str) -> np.ndarray:
    with open_image(path, f"prediction of test id {img_id}", fix="write it again",
                    formats=("PNG",)) as img:
        arr = np.asarray(img)
    if arr.ndim != 2:
        raise UserError(f"prediction {path} of test id {img_id} has shape {arr.shape}, not a "
                        "single-channel index PNG; save class indices (0..20) as a mode L or P PNG, "
                        "not colours")
    return arr


def _check_values(arr: np.ndarray, path: str, img_id: str) -> None:
    if arr.dtype.kind not in "iub":
        raise UserError(f"prediction {path} of test id {img_id} holds {arr.dtype} values, not "
                        "class indices; save class indices (0..20) as a mode L or P PNG")
    bad = (arr < 0) | (arr >= NUM_CLASSES)
    if bad.any():
        value = int(arr[bad][0])
        raise UserError(f"prediction {path} of test id {img_id} holds value {value} outside 0..20 "
                        f"({int(bad.sum())} pixels); predict one of the 21 VOC classes for every "
                        "pixel (no 255/ignore) and write it again")


def check_predictions(ids: Sequence[str], input_dir: str, data_folder: Optional[str]) -> None:
    """Raise a :class:`UserError` for the first test id whose prediction is missing or wrong."""
    missing = [i for i in ids if not os.path.isfile(os.path.join(input_dir, i + ".png"))]
    if missing:
        raise UserError(f"no prediction for test id {missing[0]}: "
                        f"{os.path.join(input_dir, missing[0] + '.png')} does not exist "
                        f"({len(missing)} of {len(ids)} test ids missing); predict the whole test "
                        "split (eval_seg_voc.py --infer_set test) or pass the --input folder that "
                        "holds its PNGs")
    layout = voc_layout(data_folder) if data_folder else None
    for img_id in ids:
        path = os.path.join(input_dir, img_id + ".png")
        arr = _read_prediction(path, img_id)
        if layout is not None:
            jpg = layout.image_path("test", img_id)
            if not os.path.isfile(jpg):
                raise UserError(f"image {jpg} of test id {img_id} does not exist; check "
                                "--data_folder and the test list")
            width, height = image_size(jpg, f"image of test id {img_id}", fix="replace it")
            if arr.shape != (height, width):
                raise UserError(f"prediction {path} of test id {img_id} is {arr.shape[1]}x"
                                f"{arr.shape[0]} but its image {jpg} is {width}x{height}; predict "
                                "at the original image resolution")
        _check_values(arr, path, img_id)


def write_server_pngs(ids: Sequence[str], input_dir: str, out_dir: str) -> str:
    """Write the palette PNGs of ``ids``; return the comp6_test_cls folder."""
    make_output_dir(out_dir, "--output", allow_link=True)
    for depth in range(1, len(SERVER_SUBDIR) + 1):   # the server's folders: made here, never links
        dst = make_output_dir(os.path.join(out_dir, *SERVER_SUBDIR[:depth]))
    palette = voc_server_palette().reshape(-1).tolist()
    for img_id in ids:
        arr = _read_prediction(os.path.join(input_dir, img_id + ".png"), img_id).astype(np.uint8)
        img = Image.fromarray(arr)  # mode L
        img.putpalette(palette)  # becomes mode P with the same indices
        write_atomically(output_path(dst, img_id + ".png"), lambda f: img.save(f, format="PNG"),
                         binary=True)
    return dst


def write_tar(ids: Sequence[str], out_dir: str) -> str:
    """Write ``out_dir/results.tar.gz`` with the results/ folders and the PNGs of ``ids`` only."""
    path = os.path.join(out_dir, "results.tar.gz")
    dst = os.path.join(out_dir, *SERVER_SUBDIR)

    def write(f):
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for depth in range(1, len(SERVER_SUBDIR) + 1):
                name = "/".join(SERVER_SUBDIR[:depth])
                tar.add(os.path.join(out_dir, *SERVER_SUBDIR[:depth]), arcname=name, recursive=False)
            for img_id in ids:
                name = "/".join(SERVER_SUBDIR + (img_id + ".png",))
                tar.add(output_path(dst, img_id + ".png"), arcname=name, recursive=False)

    write_atomically(path, write, binary=True)
    return path


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if not args.input:
        raise UserError("--input is required: the folder of <id>.png index predictions of the "
                        "test split (e.g. from eval_seg_voc.py --infer_set test)")
    if not os.path.isdir(args.input):
        raise UserError(f"--input {args.input} is not a folder; pass the folder of <id>.png "
                        "index predictions")
    if not args.output:
        raise UserError("--output is required: the folder to write results/ and results.tar.gz into")
    ids = _test_ids(args)
    check_predictions(ids, args.input, args.data_folder)

    wanted = set(ids)
    extra = sorted(f for f in os.listdir(args.input)
                   if f.endswith(".png") and f[:-4] not in wanted)
    if extra:
        print(f"note: ignored {len(extra)} PNG(s) in {args.input} that are not in the test list "
              f"(first: {extra[0]})")
    if len(ids) != VOC_TEST_SIZE:
        print(f"note: the list has {len(ids)} ids; the official VOC2012 test split has "
              f"{VOC_TEST_SIZE}")

    dst = write_server_pngs(ids, args.input, args.output)
    tar = write_tar(ids, args.output) if args.tar else None
    print(f"converted {len(ids)} predictions into {dst}; "
          + (f"archive {tar} (upload it to the evaluation server)" if tar else "no archive (--no-tar)"))


if __name__ == "__main__":
    main(sys.argv[1:])
