"""Segment arbitrary images with a trained DuPL checkpoint.

    python infer.py --model_path dupl_voc.pth --input photos/ --out predictions/
    python infer.py --model_path dupl_voc.pth --input a.jpg b.png --out predictions/ --branch 2

Any JPEG/PNG (grayscale, RGBA, palette, any size) is read as RGB, normalised with the input
statistics the checkpoint was trained with (its encoder's: ImageNet's for ViT/DeiT) and segmented at its own size with the VOC multi-scale + flip rule (docs/method.md#evaluation). For each image ``<name>`` three files are written to ``--out``:

* ``<name>.png``          single-channel class indices 0..C-1
* ``<name>_color.png``    the same indices as a palette (mode "P") PNG with the VOC colours
* ``<name>_overlay.png``  the image blended 50 % with the colour prediction

``--crf`` refines the prediction with the dense CRF of the evaluation (``--crf_backend``; the
torch CRF refines ``--crf_batch`` images at once, ``--crf_class_chunk`` classes at a time).

Files without an image extension are skipped with a note.
"""
import argparse
import functools
import sys
import time

import numpy as np
from PIL import Image

from datasets.readers import MAX_IMAGE_PIXELS, read_image
from engine.crf import add_crf_backend_flags, check_crf_flags, crf_driver, resolve_crf_backend
from utils.cli import ArgumentParser, add_numbers, check_scales
from utils.errors import UserError, exit_on_user_error
from utils.precision import add_amp_flag, resolve_amp
from utils.safe_io import output_path, save_image
from engine.run_state import resolve_model_flags
from engine.inference import BRANCHES, VOC_EVAL_SCALES, load_model, segment_logits
from model.settings import default_model
from engine.script_common import (add_model_flags, add_model_path_flag, class_names, collect_inputs, output_folder,
                                  output_names, pick_device)
from engine.visualize import blend, label_image

def read_input_image(path: str) -> np.ndarray:
    """The RGB image of an input file (JPEG or PNG only; anything else is a one-line error), up to
    the decoder's pixel limit (a photo may be larger than a dataset image)."""
    return read_image(path, max_pixels=MAX_IMAGE_PIXELS)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Segment JPEG/PNG images with a DuPL checkpoint.")
    add_model_path_flag(p, required=True)
    p.add_argument("--input", nargs="+", required=True,
                   help="image files and/or folders of images (not searched recursively)")
    p.add_argument("--out", "--work_dir", dest="out", required=True, help="output folder (created)")
    p.add_argument("--branch", default="ensemble", choices=BRANCHES,
                   help="student 1, student 2 or the mean of both students' softmax")
    add_numbers(p, "--scales", default=VOC_EVAL_SCALES, help="inference scales, merged by max (each with its flip)")
    add_model_flags(p, "voc")
    p.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=False,
                   help="run on the CPU even when a GPU exists")
    add_amp_flag(p)
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=False,
                   help="refine the prediction with the evaluation's dense CRF")
    add_crf_backend_flags(p)
    return p


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    check_scales("--scales", args.scales)
    check_crf_flags(args)
    images, skipped = collect_inputs(args.input)
    for f in skipped:
        print(f"note: skipping {f} (not a .jpg/.jpeg/.png image)")
    if not images:
        raise UserError(f"--input {' '.join(args.input)} holds no .jpg/.jpeg/.png image")
    device = pick_device(args.cpu)
    backend = resolve_crf_backend(args.crf_backend, device)
    args.amp = resolve_amp(args.amp, device)
    ckpt = resolve_model_flags(args, default_model("voc"))
    net = load_model(ckpt, args.backbone, args.num_classes, args.aux_layer, device, source=args.model_path)
    del ckpt
    names = class_names(args.num_classes)
    output_folder(args.out, "--out")

    start = time.time()
    found = np.zeros(args.num_classes, dtype=np.int64)
    corrupt = []
    crf = crf_driver(args, backend, device)

    def write(path: str, name: str, rgb: np.ndarray, pred: np.ndarray) -> None:
        color = label_image(pred, palette=True)
        save_image(output_path(args.out, name + ".png"), label_image(pred))
        save_image(output_path(args.out, name + "_color.png"), color)
        overlay = blend(rgb, np.asarray(color.convert("RGB")))
        save_image(output_path(args.out, name + "_overlay.png"), Image.fromarray(overlay))
        present = [int(c) for c in np.unique(pred) if c != 0]
        found[present] += 1
        shown = ", ".join(names[c] for c in present) or "background only"
        print(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}) -> {name}.png: {shown}", flush=True)

    for path, name in zip(images, output_names(images)):
        try:
            rgb = read_input_image(path)
        except UserError as exc:
            print(f"warning: skipping {path}: {exc}", file=sys.stderr, flush=True)
            corrupt.append(path)
            continue
        logits = segment_logits(net, rgb, device, args.branch, args.scales, args.amp)
        if args.crf:
            crf.submit((rgb, logits[0].softmax(0), functools.partial(write, path, name, rgb)))
        else:
            write(path, name, rgb, logits[0].argmax(0).byte().cpu().numpy())
    crf.close()
    if len(corrupt) == len(images):
        raise UserError(f"none of the images of --input could be read (e.g. {corrupt[0]})")
    elapsed = time.time() - start
    common = ", ".join(f"{names[c]} {found[c]}" for c in np.argsort(-found, kind="stable")
                       if found[c] > 0) or "none"
    print(f"segmented {len(images)} image(s) in {elapsed:.1f} s on {device.type} "
          f"(branch {args.branch}, scales {' '.join(str(s) for s in args.scales)}) into "
          f"{args.out}; skipped {len(skipped)} non-image file(s) and {len(corrupt)} unreadable "
          f"image(s); images per class: {common}")


if __name__ == "__main__":
    main(sys.argv[1:])
