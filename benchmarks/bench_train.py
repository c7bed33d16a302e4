"""Training-iteration speed and memory of each DuPL phase.

    python benchmarks/bench_train.py --backbone deit_base_patch16_224 --crop_size 448 \
        --samples_per_gpu 2 --iters 30 [--amp] [--grad_checkpointing] [--json out.json]

Any supported encoder family: ``--backbone vit_base_patch14_reg4_dinov2`` (DINOv2), ``..._dinov3``,
``..._clip_224``, ``..._siglip_224``, ``eva02_...``; ``--backbone_args depth=2,...`` shrinks it.

Runs the real training step (the engine's ``engine.train_step.TrainingStep`` around
``model.dupl.dupl_step``, backward, AdamW step) on synthetic VOC-format data (written to
``demo_data`` when ``--data_folder`` is not given) with random weights, for iterations in phase A
(before cam_iters), B (before gmm_iters) and C (GMM + consistency), after ``--warmup`` untimed
iterations per phase. Prints the median s/iter, images/s, the peak GPU memory, the estimated FLOP
of one iteration and the achieved fraction of the GPU's dense peak, and a breakdown of one extra
iteration: multi-scale CAMs, strong view, forward, PTC, PAR refinement, GMM filter, consistency
branch (the step's ``dupl/<stage>`` profiler ranges: on a GPU the span of each range's kernels, on
the CPU its wall time under the profiler), backward, optimiser step and data wait (synchronised
wall time), so the total runs slightly above the plain s/iter.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.common import sync, voc_folder, write_result  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from datasets.layout import voc_layout  # noqa: E402
from datasets.lists import ensure_lists  # noqa: E402
from datasets.segmentation import TrainDataset  # noqa: E402
from datasets.transforms import TrainAugmentation  # noqa: E402
from model.dupl import Batch  # noqa: E402
from model.network import DualStudentNet  # noqa: E402
from model.par import PAR  # noqa: E402
from model.schedule import paper_config  # noqa: E402
from model.settings import paper  # noqa: E402
from utils.precision import add_amp_flag, autocast, resolve_amp  # noqa: E402
from engine.optim import PolyWarmupAdamW  # noqa: E402
from engine.train_step import TrainingStep, release_idle_gradients  # noqa: E402

# dense peak TFLOP/s (fp32 without tensor cores, bf16 tensor cores) of known GPUs
PEAK_TFLOPS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0),
               "RTX 3090": (35.6, 71.0), "L40S": (91.6, 362.0)}


class StageTimer:
    """``timer(name)`` context managers that synchronise the device and add up wall time."""

    def __init__(self, device):
        self.device, self.times = device, defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name):
        sync(self.device)
        t = time.perf_counter()
        yield
        sync(self.device)
        self.times[name] += time.perf_counter() - t


def count_flops(step, batch, n, par, gen) -> float:
    """FLOP of one training iteration (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        out = step(batch, n, par, gen)
        out.loss.backward()
    step.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def profiled_stages(prof, device) -> dict:
    """Seconds per ``dupl/<stage>`` range of a profiled step: on a GPU the span of the range's
    kernels on the device (its GPU annotation; the host range when it launched none), on the CPU
    the range's wall time."""
    host, gpu = defaultdict(float), defaultdict(float)
    for e in prof.events():
        if e.name.startswith("dupl/"):
            on_host = e.device_type == torch.autograd.DeviceType.CPU
            (host if on_host else gpu)[e.name[len("dupl/"):]] += e.time_range.elapsed_us() / 1e6
    return {**host, **gpu} if device.type == "cuda" else dict(host)


def peak_tflops(name: str, amp: bool) -> float:
    for key, (fp32, bf16) in PEAK_TFLOPS.items():
        if key in name:
            return bf16 if amp else fp32
    return float("nan")


def one_iteration(step, opt, it, n: int, par, gen, device, amp: bool, staged: bool):
    """One training iteration of the step at ``n``: ``(seconds, stage breakdown or None, batch)``.
    ``staged``: the step runs under the profiler and backward / optimiser are synchronised."""
    timer = StageTimer(device)
    t0 = time.perf_counter()
    _, images, labels, boxes = next(it)
    batch = Batch(*(t.to(device, non_blocking=True) for t in (images, labels, boxes)),
                  max_present=int(labels.sum(1).max()))
    timer.times["data_wait"] = time.perf_counter() - t0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with (profile(activities=activities) if staged else contextlib.nullcontext()) as prof:
        with autocast(device, amp):
            out = step(batch, n, par, gen)
        if staged:
            sync(device)             # the profile holds every kernel of the step
    if staged:
        timer.times.update(profiled_stages(prof, device))
    with (timer("backward") if staged else contextlib.nullcontext()):
        out.loss.backward()
    with (timer("optimizer") if staged else contextlib.nullcontext()):
        release_idle_gradients(step.net, out.active)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0, dict(timer.times) if staged else None, batch


def time_phase(args, step, opt, it, n: int, par, gen, device, name: str) -> dict:
    """``--warmup`` + ``--iters`` timed iterations at ``n``, one profiled iteration and the FLOP
    count; prints and returns the phase's numbers."""
    times, breakdown = [], None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.iters + 1):
        staged = i == args.warmup + args.iters     # one extra iteration, profiled by stage
        seconds, stages, batch = one_iteration(step, opt, it, n, par, gen, device, args.amp, staged)
        if args.warmup <= i < args.warmup + args.iters:
            times.append(seconds)
        breakdown = stages or breakdown
    with autocast(device, args.amp):
        flops = count_flops(step, batch, n, par, gen)
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    achieved = flops / med / 1e12
    top = peak_tflops(name, args.amp)
    fraction = achieved / top if top == top else None    # unknown device: no fraction
    stages = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in breakdown.items())
    mem = f"peak memory {peak:.2f} GiB" if peak is not None else "peak memory n/a (CPU)"
    share = f"{100 * fraction:.0f}% of peak" if fraction is not None else "peak unknown"
    print(f"phase {step.cfg.phase(n)}: {med:.3f} s/iter, {args.samples_per_gpu / med:.2f} images/s, {mem}, "
          f"{flops / 1e9:.1f} GFLOP/iter = {achieved:.2f} TFLOP/s ({share})\n"
          f"  breakdown: {stages}", flush=True)
    return {"s_per_iter": med, "images_per_s": args.samples_per_gpu / med, "peak_mem_gib": peak,
            "tflop_per_iter": flops / 1e12, "achieved_tflops": achieved, "fraction_of_peak": fraction,
            "breakdown_s": breakdown}


def main() -> None:
    p = argparse.ArgumentParser(description="DuPL training-step benchmark",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data_folder", help="VOC2012-layout folder (default: synthetic demo_data)")
    p.add_argument("--backbone", default=paper("backbone"),
                   help="timm encoder of any supported family (ViT/DeiT, DINOv2, DINOv3, CLIP, SigLIP, EVA-02)")
    p.add_argument("--backbone_args", help="timm architecture overrides, e.g. depth=2,embed_dim=64,num_heads=2")
    p.add_argument("--grad_checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="recompute each encoder block in the backward pass")
    p.add_argument("--crop_size", type=int, default=paper("crop_size"), help="training crop")
    p.add_argument("--samples_per_gpu", type=int, default=2, help="images per step")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per phase")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations per phase")
    p.add_argument("--phases", default="ABC", help="phases to time (A, B, C)")
    add_amp_flag(p)
    p.add_argument("--num_workers", type=int, default=4, help="data loader workers")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    args.amp = resolve_amp(args.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    layout = voc_layout(voc_folder(args.data_folder))
    lists = ensure_lists(layout, None, ["train_aug"])
    data = TrainDataset(layout, lists, "train_aug", TrainAugmentation(args.crop_size, paper("scales")))
    loader = DataLoader(data, batch_size=args.samples_per_gpu, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                        pin_memory=device.type == "cuda")

    torch.manual_seed(0)
    net = DualStudentNet(args.backbone, 21, backbone_args=args.backbone_args,
                         grad_checkpointing=args.grad_checkpointing).to(device)
    opt = PolyWarmupAdamW(net.param_groups(paper("lr")), lr=paper("lr"), max_iters=paper("max_iters"))
    cfg = paper_config("voc")
    step = TrainingStep(net, cfg)
    par = PAR().to(device)
    gen = torch.Generator().manual_seed(0)
    phase_step = {"A": 100, "B": cfg.cam_iters + 100, "C": cfg.gmm_iters + 100}
    results = {}

    def batches():
        while True:
            for b in loader:
                yield b

    it = batches()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    for phase in args.phases:
        results[phase] = time_phase(args, step, opt, it, phase_step[phase], par, gen, device, name)
    print(f"device {name}, backbone {args.backbone}, crop {args.crop_size}, "
          f"{args.samples_per_gpu} images per step, amp {args.amp}, "
          f"grad_checkpointing {args.grad_checkpointing}")
    write_result(args.json, "bench_train.py", {"device": name, "args": vars(args), "phases": results})


if __name__ == "__main__":
    main()
