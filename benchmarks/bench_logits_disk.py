"""Disk taken by the evaluation's saved logits (``logits/<id>.npz``) at the datasets' image sizes.

    python benchmarks/bench_logits_disk.py [--json benchmarks/results/DATE_logits_disk.json]

For one image of each typical size (VOC 500x375 and 375x500, COCO 640x480) it runs the evaluation's
own path (:func:`engine.evaluation.multiscale_logits` with the paper's scales, then
:func:`engine.inference.save_logits`) on a random ``deit_tiny_patch16_224`` pair (the file's size
depends on the patch, the class count and the image size, not on the encoder's width) and records
the file's bytes; ``per_split_gib`` multiplies them by the splits' image counts (an estimate: VOC
images are at most 500 pixels a side, most of them 500x375 or 375x500; COCO's logits are at the
token grid, the same for every image).
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from model.network import DualStudentNet  # noqa: E402
from engine.evaluation import multiscale_logits  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from engine.inference import COCO_EVAL_SCALES, VOC_EVAL_SCALES, save_logits  # noqa: E402

CASES = (("voc", 21, (375, 500), VOC_EVAL_SCALES), ("voc", 21, (500, 375), VOC_EVAL_SCALES),
         ("coco", 81, (480, 640), COCO_EVAL_SCALES))
SPLITS = {"voc": {"val": 1449, "test": 1456}, "coco": {"val": 40137, "val_part": 5000}}


@torch.no_grad()
def measure(dataset: str, classes: int, size, scales, folder: str) -> dict:
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", classes).eval()
    image = torch.randn(3, *size)
    raw, _ = multiscale_logits(net, image, dataset, scales, torch.device("cpu"), amp=False)
    path = os.path.join(folder, f"{dataset}_{size[0]}x{size[1]}.npz")
    save_logits(path, dataset, raw, size, scales)
    size_bytes = os.path.getsize(path)
    return {"dataset": dataset, "classes": classes, "image_size": list(size), "scales": list(scales),
            "bytes_per_image": size_bytes,
            "per_split_gib": {k: round(n * size_bytes / 2 ** 30, 2) for k, n in SPLITS[dataset].items()}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(*case, folder) for case in CASES]
    for row in rows:
        print(json.dumps(row))
    return write_result(args.json, "bench_logits_disk.py", {"logits": rows})


if __name__ == "__main__":
    main()
