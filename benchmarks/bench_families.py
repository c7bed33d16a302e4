"""Time and peak memory of one phase-C training step per encoder family.

    python benchmarks/bench_families.py --backbones vit_small_patch14_reg4_dinov2 \
        vit_base_patch16_clip_224 --crop_size 224 --samples_per_gpu 2 --iters 3 --warmup 1 \
        [--amp off on] [--grad_checkpointing off on] [--isolate] [--json out.json]

For every backbone and every combination of ``--amp`` and ``--grad_checkpointing``, builds the dual
network (random weights; ``--backbone_args`` shrinks it), takes one synthetic VOC-format batch
(``demo_data`` unless ``--data_folder``) and runs ``--warmup`` + ``--iters`` phase-C steps (CAMs,
PAR, GMM filter, consistency branch, backward, AdamW step) on it. Reports the median seconds per
step and the peak memory: on a GPU ``torch.cuda.max_memory_allocated`` (reset per configuration);
on the CPU, with ``--isolate``, each configuration runs in its own process and the peak resident
set size of that process (``VmHWM``) is reported next to its size just before the first step, so
the difference is what the steps themselves need (activations, gradients, optimiser state).
Without ``--isolate`` on the CPU the memory fields are null.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.common import sync, voc_folder, write_result  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from datasets.layout import voc_layout  # noqa: E402
from datasets.lists import ensure_lists  # noqa: E402
from datasets.segmentation import TrainDataset  # noqa: E402
from datasets.transforms import TrainAugmentation  # noqa: E402
from model.backbone import input_stats  # noqa: E402
from model.dupl import Batch  # noqa: E402
from model.network import DualStudentNet  # noqa: E402
from model.par import PAR  # noqa: E402
from model.schedule import paper_config  # noqa: E402
from model.settings import paper  # noqa: E402
from engine.optim import PolyWarmupAdamW  # noqa: E402
from engine.train_step import TrainingStep  # noqa: E402

FAMILIES = ("vit_small_patch14_reg4_dinov2", "vit_small_patch16_dinov3", "vit_base_patch16_clip_224",
            "vit_base_patch16_siglip_224", "eva02_tiny_patch14_224")


def rss_gib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in GiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def one_config(args, backbone: str, amp: bool, ckpt: bool) -> dict:
    """Phase-C steps of one configuration in this process."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    layout = voc_layout(voc_folder(args.data_folder))
    lists = ensure_lists(layout, None, ["train_aug"])
    torch.manual_seed(0)
    data = TrainDataset(layout, lists, "train_aug", TrainAugmentation(args.crop_size, paper("scales"), stats=input_stats(backbone)))
    _, images, labels, boxes = next(iter(DataLoader(data, batch_size=args.samples_per_gpu, shuffle=True)))
    batch = Batch(images.to(device), labels.to(device), boxes.to(device), int(labels.sum(1).max()))
    torch.manual_seed(0)
    net = DualStudentNet(backbone, 21, backbone_args=args.backbone_args, grad_checkpointing=ckpt).to(device)
    params = sum(p.numel() for p in net.branch1.encoder.parameters())
    opt = PolyWarmupAdamW(net.param_groups(paper("lr")), lr=paper("lr"), max_iters=paper("max_iters"))
    cfg = paper_config("voc")
    step = TrainingStep(net, cfg)
    n = cfg.gmm_iters + 100
    par = PAR().to(device)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_gib("VmRSS") if device.type == "cpu" else None
    times, losses = [], []
    for i in range(args.warmup + args.iters):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = step(batch, n, par, gen)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(out.loss))
    enc = net.branch1.backbone
    result = {"backbone": backbone, "family": enc.family, "amp": amp, "grad_checkpointing": ckpt,
              "patch": enc.patch_size, "width": enc.width, "depth": enc.depth, "encoder_params_m": params / 1e6,
              "s_per_step": statistics.median(times), "step_times_s": times, "first_loss": losses[0],
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    elif args.isolate:
        result["rss_before_steps_gib"] = before
        result["peak_rss_gib"] = rss_gib("VmHWM")
        result["peak_rss_above_start_gib"] = result["peak_rss_gib"] - before
    return result


def main() -> None:
    p = argparse.ArgumentParser(description="phase-C step time and peak memory per encoder family",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=list(FAMILIES), help="timm encoders")
    p.add_argument("--backbone_args", help="timm architecture overrides for every backbone (rehearsals)")
    p.add_argument("--data_folder", help="VOC2012-layout folder (default: synthetic demo_data)")
    p.add_argument("--crop_size", type=int, default=224, help="training crop")
    p.add_argument("--samples_per_gpu", type=int, default=2, help="images per step")
    p.add_argument("--iters", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    p.add_argument("--amp", nargs="+", choices=("off", "on"), default=["off"], help="bf16 autocast")
    p.add_argument("--grad_checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"],
                   help="timm's gradient checkpointing of the encoder blocks")
    p.add_argument("--isolate", action="store_true",
                   help="each configuration in its own process (CPU peak memory)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--one", nargs=3, metavar=("BACKBONE", "AMP", "CKPT"), help=argparse.SUPPRESS)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()

    if args.one:
        backbone, amp, ckpt = args.one
        print("RESULT " + json.dumps(one_config(args, backbone, amp == "on", ckpt == "on")), flush=True)
        return
    results = []
    for backbone in args.backbones:
        for amp in args.amp:
            for ckpt in args.grad_checkpointing:
                if args.isolate:
                    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--one", backbone, amp, ckpt]
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
                    if res.returncode or not line:
                        sys.exit(f"{backbone} amp {amp} ckpt {ckpt} failed:\n{res.stderr[-2000:]}")
                    r = json.loads(line[0][len("RESULT "):])
                else:
                    r = one_config(args, backbone, amp == "on", ckpt == "on")
                results.append(r)
                mem = (f"peak {r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else
                       f"peak RSS {r['peak_rss_gib']:.2f} GiB (+{r['peak_rss_above_start_gib']:.2f} over "
                       f"the start)" if "peak_rss_gib" in r else "peak memory n/a")
                print(f"{backbone} ({r['family']}, patch {r['patch']}, {r['encoder_params_m']:.1f}M): "
                      f"amp {amp}, grad_checkpointing {ckpt}: {r['s_per_step']:.3f} s/step, {mem}",
                      flush=True)
    write_result(args.json, "bench_families.py", {"threads": torch.get_num_threads(), "results": results})


if __name__ == "__main__":
    main()
