"""Parameters and input statistics of each encoder family's base model, as the students build it.

    python benchmarks/count_params.py [--backbones NAME ...] [--json benchmarks/results/DATE_encoder_params.json]

For every backbone, builds one student's :class:`model.backbone.Backbone` the way training does
(timm's architecture, random weights, no download; on the meta device, so no memory is filled)
and counts its parameters: all of them (what a checkpoint holds, the unused heads included) and
the trainable ones (without the frozen position embedding and heads). It also records the input
statistics the encoder normalises with (:func:`model.backbone.input_stats`: ImageNet's on the
paper's ViT/DeiT path, else timm's ``pretrained_cfg`` of the weights' tag). README.md's encoder
table quotes this file (tests/test_doc_numbers.py compares them).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from model.backbone import EXAMPLES, Backbone, input_stats  # noqa: E402
from model.settings import paper  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402

BACKBONES = (paper("backbone"), "vit_base_patch16_224") + EXAMPLES


def count(name: str) -> dict:
    """The encoder of ``name``: family, patch, width, depth, parameters, input statistics."""
    with torch.device("meta"):
        enc = Backbone(name)
    stats = input_stats(name)
    return {"backbone": name, "family": enc.family, "patch": enc.patch_size, "width": enc.width,
            "depth": enc.depth, "params": sum(p.numel() for p in enc.timm.parameters()),
            "trainable_params": sum(p.numel() for p in enc.timm.parameters() if p.requires_grad),
            "input_mean": list(stats.mean), "input_std": list(stats.std)}


def main() -> None:
    p = argparse.ArgumentParser(description="parameters and input statistics per encoder family",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), help="timm encoders")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    results = []
    for name in args.backbones:
        r = count(name)
        results.append(r)
        print(f"{name} ({r['family']}, patch {r['patch']}): {r['params'] / 1e6:.1f} M parameters "
              f"({r['trainable_params'] / 1e6:.1f} M trainable); mean {r['input_mean']}, std {r['input_std']}",
              flush=True)
    write_result(args.json, "count_params.py", {"timm": timm.__version__, "results": results})


if __name__ == "__main__":
    main()
