"""Distributed multi-scale + CRF evaluation of a DuPL checkpoint on MS COCO 2014 (docs/method.md#evaluation).

    python -m torch.distributed.run --nproc_per_node=N eval_seg_coco_ddp.py \
        --img_folder coco/JPEGImages --label_folder coco/SegmentationClass --model_path CKPT
    python eval_seg_coco_ddp.py ...            # one process

Each rank infers and CRF-processes its own shard (every N-th image); ranks sum confusion
matrices, so memory stays flat on the 40k val images and the printed mIoU equals a one-process
run's. Images are resized to 448x448, scales 1.0/1.25/1.5 with flips summed at 28x28, then
upsampled to the mask size. ``--infer_set val_part|val``.
"""
import sys

from utils.errors import exit_on_user_error
from engine.evaluation import evaluate, get_args_parser


@exit_on_user_error
def run(argv=None):
    return evaluate(get_args_parser("coco").parse_args(argv), "coco")


if __name__ == "__main__":
    run(sys.argv[1:])
