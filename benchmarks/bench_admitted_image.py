"""What the largest admitted dataset image costs to evaluate (docs/data.md#untrusted-files).

    python benchmarks/bench_admitted_image.py [--model_path CKPT | --backbone NAME] [--width 2048
        --height 1024] [--scales 1.0,1.5,1.25] [--crf] [--json FILE]

Builds one image of ``--width`` x ``--height`` pixels (by default the largest a dataset image may
hold, :data:`datasets.readers.MAX_DATASET_PIXELS`), runs the VOC multi-scale + flip inference of
both students on it (the rule of ``eval_seg_voc.py``) and, with ``--crf``, the pydensecrf dense
CRF of 21 classes; prints the seconds and the peak resident memory above the start of each stage.
Without ``--model_path`` the network is randomly initialised (``--backbone``, default the paper's
DeiT-B); the cost does not depend on the weights.
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from datasets.readers import MAX_DATASET_PIXELS  # noqa: E402
from model.network import DualStudentNet  # noqa: E402
from utils.cli import add_numbers  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from engine.inference import VOC_EVAL_SCALES, load_model, merge_voc, to_size, voc_raw_logits  # noqa: E402
from model.settings import paper  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model_path", help="checkpoint to evaluate (default: random weights of --backbone)")
    p.add_argument("--backbone", default=paper("backbone"), help="timm encoder of the random network")
    p.add_argument("--width", type=int, default=2048, help="image width")
    p.add_argument("--height", type=int, default=MAX_DATASET_PIXELS // 2048, help="image height")
    add_numbers(p, "--scales", default=VOC_EVAL_SCALES, help="inference scales (with flips)")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=False,
                   help="also run the pydensecrf dense CRF of 21 classes")
    p.add_argument("--json", help="write the numbers to this file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.model_path:
        net = load_model(args.model_path, None, None, None, torch.device("cpu"))
    else:
        net = DualStudentNet(args.backbone, 21, pretrained=False).eval()
    image = torch.randn(1, 3, args.height, args.width)
    start = peak_mib()
    t0 = time.perf_counter()
    with torch.no_grad():
        raw = voc_raw_logits(net, image, args.scales)
        logits = merge_voc(raw, (args.height, args.width))
        probs = ((to_size(logits[0], (args.height, args.width)).softmax(1)
                  + to_size(logits[1], (args.height, args.width)).softmax(1)) / 2)[0]
    result = dict(threads=torch.get_num_threads(), backbone=net.backbone_name)
    result.update({"image": [args.width, args.height], "pixels": args.width * args.height,
                   "scales": list(args.scales), "inference_s": round(time.perf_counter() - t0, 1),
                   "inference_peak_mib_above_start": round(peak_mib() - start, 1)})
    if args.crf:
        from engine.crf import dense_crf
        rgb = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        before, t0 = peak_mib(), time.perf_counter()
        dense_crf(rgb, probs.float().numpy())
        result["crf_s"] = round(time.perf_counter() - t0, 1)
        result["crf_peak_mib_above_start"] = round(peak_mib() - before, 1)
    result = write_result(args.json, "bench_admitted_image.py", result)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
