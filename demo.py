"""The demo: DuPL trained from scratch on synthetic VOC-format data, on a laptop CPU.

    python demo.py [--out demo_data] [--work_dir work_dirs/demo] [--backbone NAME [--backbone_args ...]] [--amp]

Writes the synthetic dataset (VOC and COCO layouts) if it is missing, derives its split lists
and image-level labels, scores the all-background prediction on the synthetic val split as a
floor, then trains a small randomly initialised ViT (deit_tiny, 128-pixel crops, 4 images per
step) through the same engine and all three phases as ``train_final_voc.py`` with a shortened
schedule (``--backbone`` tries another ViT family, randomly initialised too), prints the
per-class validation table of both students and draws a few val images
(image, CAM, pseudo label, both students' predictions, ground truth) into
``<work_dir>/demo_figure.png``.
"""
import argparse
import os
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets import synthetic
from datasets.layout import coco_layout, voc_layout
from datasets.lists import ensure_lists
from datasets.segmentation import EvalDataset, TrainDataset
from datasets.transforms import TrainAugmentation
from model.settings import paper
from utils.cli import ArgumentParser
from engine.demo_figure import demo_figure, pick_images
from utils.errors import exit_on_user_error
from utils.precision import add_amp_flag
from utils.safe_io import open_for_append, write_atomically
from engine.inference import load_model
from utils.metric import ConfusionMatrix, format_table
from engine.train_args import CHECKPOINT, get_args_parser as train_args_parser
from engine.train_engine import main as train_main
from engine.validation import result_table


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_data", help="folder of the synthetic dataset")
    p.add_argument("--crop_size", type=int, default=128, help="training crop of the demo")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--work_dir", default=os.path.join("work_dirs", "demo"), help="training run folder")
    p.add_argument("--max_iters", type=int, default=DEMO_SCHEDULE["max_iters"],
                   help="training steps (phases scale with it)")
    p.add_argument("--lr", type=float, default=DEMO_SCHEDULE["lr"],
                   help="backbone learning rate (heads x10)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="train after preparing the data")
    p.add_argument("--backbone", default=DEMO_BACKBONE,
                   help="timm encoder to train (random weights), e.g. vit_small_patch14_reg4_dinov2")
    p.add_argument("--backbone_args",
                   help="timm architecture overrides, e.g. depth=6,embed_dim=192,num_heads=3 (a smaller, "
                   "faster model of the family)")
    add_amp_flag(p)
    return p


DEMO_BACKBONE = "deit_tiny_patch16_224"
DEMO_SCHEDULE = dict(max_iters=400, cam_iters=100, gmm_iters=250, warmup_iters=30, lr=2e-4)


def demo_train_args(data_folder: str, work_dir: str, crop_size: int, max_iters: int,
                    lr: float = DEMO_SCHEDULE["lr"], backbone: str = DEMO_BACKBONE,
                    backbone_args: str = None, amp: bool = False):
    """Flags of ``train_final_voc.py`` for the demo: the paper's method on a shortened schedule."""
    scale = max_iters / DEMO_SCHEDULE["max_iters"]
    it = lambda k: str(max(1, int(round(DEMO_SCHEDULE[k] * scale))))
    extra = ["--backbone_args", backbone_args] if backbone_args else []
    return ["--data_folder", data_folder, "--work_dir", work_dir, "--backbone",
            backbone, *extra, "--no-pretrained", "--crop_size", str(crop_size),
            "--samples_per_gpu", "4", "--max_iters", str(max_iters), "--cam_iters", it("cam_iters"),
            "--gmm_iters", it("gmm_iters"), "--warmup_iters", it("warmup_iters"),
            "--lr", str(lr), "--log_iters", str(max(1, max_iters // 16)),
            "--eval_iters", str(max_iters), "--num_workers", "1", "--cpu"] + (["--amp"] if amp else [])


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
    train = TrainDataset(voc, voc_lists, "train_aug", TrainAugmentation(args.crop_size, paper("scales")))
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
    baseline = 100 * scores["miou"]
    print(f"all-background mIoU {baseline:.2f}  ({time.time() - start:.1f} s)")
    if not args.train:
        return
    flags = demo_train_args(voc.image_root, args.work_dir, args.crop_size, args.max_iters, args.lr,
                            args.backbone, args.backbone_args, args.amp)
    result = train_main(train_args_parser("voc").parse_args(flags), "voc")
    miou = {k: 100 * v["miou"] for k, v in result["scores"].items()}
    print("per-class IoU on synthetic val (%):")
    print(result_table(result, voc.display_names))
    net = load_model(os.path.join(args.work_dir, CHECKPOINT), None, voc.num_classes, None,
                     torch.device("cpu"))   # backbone, aux block and input statistics from the checkpoint
    figure = os.path.join(args.work_dir, "demo_figure.png")
    val = EvalDataset(voc, voc_lists, "val", stats=net.input_stats)
    picture = Image.fromarray(demo_figure(net, val, voc.display_names, torch.device("cpu"),
                                          crop_size=args.crop_size))
    write_atomically(figure, lambda f: picture.save(f, format="PNG", optimize=True), binary=True)
    print(f"picture of {len(pick_images(val, 5))} val images: {figure}")
    summary = (f"demo finished in {time.time() - start:.0f} s: segmentation mIoU "
               f"{miou['Seg_1']:.2f} / {miou['Seg_2']:.2f} (students 1 / 2), CAM mIoU "
               f"{miou['CAM_1']:.2f} / {miou['CAM_2']:.2f}, all-background baseline {baseline:.2f}")
    print(f"{summary}; log and checkpoint in {args.work_dir}")
    log_summary(os.path.join(args.work_dir, "train.log"), summary)


def log_summary(log_path: str, summary: str) -> None:
    """Append the demo's summary (its whole time and the baseline) to the run's ``train.log``, in
    the engine's line format, so that one file holds every number the demo reports."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S") + f",{int(time.time() * 1000) % 1000:03d}"
    with open_for_append(log_path) as f:
        f.write(f"{stamp} - demo.py - INFO: {summary}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
