"""Size and write time of a training checkpoint (``checkpoint.pth``; ``best.pth`` is the same).

    python benchmarks/bench_checkpoint.py [--backbone deit_base_patch16_224] [--num_classes 21]
                                          [--folder DIR] [--json benchmarks/results/DATE_checkpoint_cpu.json]

Builds the dual-student network (random weights: the size does not depend on them) and the
training optimiser as a run does, takes one AdamW step so that both moment buffers exist, and
writes the payload a run writes (:func:`utils.checkpoint.checkpoint_payload`,
:func:`utils.checkpoint.save_checkpoint`) into ``--folder`` (a temporary folder by default, removed
afterwards): the file's bytes and the seconds the write took (this machine's disk; a stop request
must finish it within the launcher's grace period, docs/usage.md), and the size of its pickle
part (what the checkpoint reader walks before loading, docs/data.md#untrusted-files).
"""
import argparse
import json
import os
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from model.network import DualStudentNet  # noqa: E402
from model.schedule import DuPLConfig  # noqa: E402
from engine.run_state import checkpoint_payload  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from engine.optim import PolyWarmupAdamW  # noqa: E402
from model.settings import paper  # noqa: E402


def measure(backbone: str, num_classes: int, folder: str) -> dict:
    torch.manual_seed(0)
    net = DualStudentNet(backbone, num_classes)
    optimizer = PolyWarmupAdamW(net.param_groups(paper("lr")), lr=paper("lr"), max_iters=10, warmup_iters=1)
    for p in net.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    args = argparse.Namespace(backbone=backbone, num_classes=num_classes)
    payload = checkpoint_payload(net, optimizer, 1, args, DuPLConfig(), -1.0)
    path = os.path.join(folder, "checkpoint.pth")
    t0 = time.perf_counter()
    save_checkpoint(path, payload)
    seconds = time.perf_counter() - t0
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as z:                 # the pickle part the checkpoint reader walks
        pickle_bytes = sum(i.file_size for i in z.infolist() if i.filename.endswith("/data.pkl"))
    os.unlink(path)
    return {"backbone": backbone, "num_classes": num_classes,
            "params": sum(p.numel() for p in net.parameters()),
            "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "bytes": size, "gigabytes": round(size / 1e9, 3), "pickle_bytes": pickle_bytes,
            "write_seconds": round(seconds, 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--backbone", nargs="+", default=[paper("backbone")], help="timm encoder names")
    p.add_argument("--num_classes", type=int, nargs="+", default=[21, 81], help="VOC 21, COCO 81")
    p.add_argument("--folder", default=None, help="where the file is written (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for backbone in args.backbone:
            for k in args.num_classes:
                rows.append(measure(backbone, k, folder))
                print(json.dumps(rows[-1]))
    return write_result(args.json, "bench_checkpoint.py", {"checkpoints": rows})


if __name__ == "__main__":
    main()
