"""Training data-loader throughput: augmented samples per second.

    python benchmarks/bench_data.py --data_folder demo_data/VOC2012 --crop_size 448 --workers 0 2

Writes the synthetic dataset to ``demo_data`` first when ``--data_folder`` does not exist and is
the default. Prints samples/s for each worker count after a warm-up batch.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.common import voc_folder  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from datasets.layout import voc_layout  # noqa: E402
from datasets.lists import ensure_lists  # noqa: E402
from datasets.segmentation import TrainDataset  # noqa: E402
from datasets.transforms import TrainAugmentation  # noqa: E402
from model.settings import paper  # noqa: E402

DEFAULT = os.path.join("demo_data", "VOC2012")  # written when missing


def main() -> None:
    p = argparse.ArgumentParser(description="training data-loader throughput",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data_folder", default=DEFAULT, help="VOC2012-layout folder")
    p.add_argument("--crop_size", type=int, default=paper("crop_size"), help="training crop")
    p.add_argument("--batch_size", type=int, default=2, help="images per batch")
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    p.add_argument("--json", help="write the numbers to this file")
    args = p.parse_args()
    layout = voc_layout(voc_folder(None if args.data_folder == DEFAULT else args.data_folder))
    lists = ensure_lists(layout, None, ["train_aug"])
    dataset = TrainDataset(layout, lists, "train_aug", TrainAugmentation(args.crop_size, paper("scales")))
    results = {}
    for workers in args.workers:
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, persistent_workers=workers > 0)
        it = iter(loader)
        next(it)  # warm-up: worker start-up
        start, n = time.perf_counter(), 0
        for _ in range(args.batches):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            n += batch[1].shape[0]
        rate = n / (time.perf_counter() - start)
        results[workers] = rate
        print(f"crop {args.crop_size}, workers {workers}: {rate:.1f} samples/s "
              f"({torch.get_num_threads()} torch threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"crop_size": args.crop_size, "samples_per_s": results}, f, indent=1)


if __name__ == "__main__":
    main()
