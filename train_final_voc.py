"""Train DuPL on PASCAL VOC 2012 (docs/method.md#losses-and-phases).

    python -m torch.distributed.run --nproc_per_node=2 train_final_voc.py --data_folder VOC2012
    python train_final_voc.py --data_folder VOC2012            # one GPU, or the CPU

All flags and their defaults: `python train_final_voc.py --help` (`engine/train_args.py`). The
training loop itself is `engine/train_engine.py`, shared with the other dataset.
"""
import sys

from utils.errors import exit_on_user_error
from engine.train_args import get_args_parser
from engine.train_engine import main


@exit_on_user_error
def run(argv=None):
    return main(get_args_parser("voc").parse_args(argv), "voc")


if __name__ == "__main__":
    run(sys.argv[1:])
