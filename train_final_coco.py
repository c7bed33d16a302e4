"""Train DuPL on MS COCO 2014 (docs/method.md#losses-and-phases).

    python -m torch.distributed.run --nproc_per_node=8 train_final_coco.py \
        --img_folder coco/JPEGImages --label_folder coco/SegmentationClass

All flags and their defaults: `python train_final_coco.py --help` (`engine/train_args.py`). The
training loop itself is `engine/train_engine.py`, shared with the other dataset.
"""
import sys

from utils.errors import exit_on_user_error
from engine.train_args import get_args_parser
from engine.train_engine import main


@exit_on_user_error
def run(argv=None):
    return main(get_args_parser("coco").parse_args(argv), "coco")


if __name__ == "__main__":
    run(sys.argv[1:])
