"""The demo: synthetic VOC-format data, derived lists, and the data pipeline end to end.

    python demo.py [--out demo_data]

Writes the synthetic dataset (VOC and COCO layouts) if it is missing, derives its split lists and
image-level labels, pushes a training batch through the augmentation, and scores the
all-background prediction on the synthetic val split as a floor for later training runs.
"""
import argparse
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from datasets import synthetic
from datasets.layout import coco_layout, voc_layout
from datasets.prepare import ensure_lists
from datasets.segmentation import EvalDataset, TrainDataset
from datasets.transforms import TrainAugmentation
from utils.errors import exit_on_user_error
from utils.metric import ConfusionMatrix, format_table


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_data", help="folder of the synthetic dataset")
    p.add_argument("--crop_size", type=int, default=128, help="training crop of the demo")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    return p


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    start = time.time()
    written = synthetic.write_all(args.out, seed=args.seed)
    for name, info in written.items():
        print(f"{name}: {'wrote' if info['written'] else 'kept existing'} {info['path']}")

    voc = voc_layout(os.path.join(args.out, "VOC2012"))
    voc_lists = ensure_lists(voc, None, ["train_aug", "val"])
    coco = coco_layout(os.path.join(args.out, "coco", "JPEGImages"))
    ensure_lists(coco, None, ["train", "val_part"])

    torch.manual_seed(0)
    train = TrainDataset(voc, voc_lists, "train_aug", TrainAugmentation(crop_size=args.crop_size))
    _, images, labels, boxes = next(iter(DataLoader(train, batch_size=4, shuffle=True)))
    print(f"training batch: images {tuple(images.shape)}, labels {tuple(labels.shape)}, "
          f"img_box {boxes.tolist()}")

    val = EvalDataset(voc, voc_lists, "val")
    cm = ConfusionMatrix(voc.num_classes)
    for _, _, mask, _ in DataLoader(val, batch_size=None):
        cm.update(mask, torch.zeros_like(mask))
    scores = cm.compute()
    print(f"all-background baseline on synthetic val ({len(val)} images):")
    print(format_table({"background": scores["iou"]}, voc.display_names, scores["present"]))
    print(f"mIoU {100 * scores['miou']:.2f}  ({time.time() - start:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
