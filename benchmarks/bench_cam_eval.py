"""CAM evaluation time against the multi-scale CAM passes it needs, fp32 and ``--amp``.

    python benchmarks/bench_cam_eval.py [--dataset voc|coco] [--model_path CKPT] [--data_folder DIR] \
        [--split train] [--num_images 40] [--size 448] [--precisions fp32 amp] [--json out.json]

For each precision:

* **CAM passes** (the floor): the multi-scale + flip CAM and aux CAM of the same images at
  ``--size`` squared through both students, as a training step computes them
  (:func:`model.cam.multiscale_cam`, ``--train_batch`` images per call, every scale in full, the
  images already in memory), once per image size in ``--train_batch`` and 1.
* **CAM evaluation**: ``eval_cam_voc.py`` (``eval_cam_coco.py``) on the same images (the split's first ``--num_images``,
  through a list folder of their own) in this process: the whole run (loading the model, the
  images, PAR, scoring the 19-threshold sweep, writing results.json) and its image loop alone
  (the ``seconds`` it reports).
* **Breakdown**: one more evaluation under torch's profiler: the seconds of its ranges
  (``cam_eval/cams``: the CAM passes, ``cam_eval/par``: the PAR pseudo labels, ``cam_eval/score``:
  resizing to the masks, the sweep and the PAR scores) and the rest of the loop.

The ratio the issue names is the loop over the faster of the two CAM-pass timings. Both runs of
each precision must give the same results.json scores (checked).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import eval_cam_coco  # noqa: E402
import eval_cam_voc  # noqa: E402
from benchmarks.common import dataset_folder, random_checkpoint, sync, write_result  # noqa: E402
from datasets.layout import coco_layout, voc_layout  # noqa: E402
from datasets.lists import ensure_lists, labels_path  # noqa: E402
from datasets.segmentation import EvalDataset  # noqa: E402
from model.cam import CAM_SCALES, multiscale_cam  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from engine.inference import load_model  # noqa: E402
from utils.precision import autocast, resolve_amp  # noqa: E402
from model.settings import paper  # noqa: E402

RANGES = ("cams", "par", "score")


def subset_lists(layout, split: str, count: int, folder: str) -> int:
    """A list folder holding the split's first ``count`` ids and the labels file; returns the count."""
    source = ensure_lists(layout, None, [split])
    with open(os.path.join(source, split + ".txt")) as f:
        ids = [line.strip() for line in f if line.strip()][:count]
    with open(os.path.join(folder, split + ".txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    shutil.copy(labels_path(source), labels_path(folder))
    return len(ids)


def cam_passes(net, images, size: int, batch: int, device, amp: bool) -> float:
    """Seconds of both students' multi-scale CAMs of ``images`` at ``size``, ``batch`` per call
    (after one untimed call)."""
    x = torch.cat([F.interpolate(im[None], size=(size, size), mode="bilinear", align_corners=False)
                   for im in images]).to(device)
    with torch.no_grad(), autocast(device, amp):
        multiscale_cam(net.students[0], x[:batch], CAM_SCALES)
        sync(device)
        start = time.perf_counter()
        for student in net.students:
            for i in range(0, len(x), batch):
                multiscale_cam(student, x[i:i + batch], CAM_SCALES)
        sync(device)
    return time.perf_counter() - start


def evaluation(script, argv: list, profiled: bool = False):
    """One CAM evaluation (``script``: eval_cam_voc or eval_cam_coco) in this process:
    ``(results, whole seconds, loop seconds, ranges)``."""
    ranges = defaultdict(float)
    start = time.perf_counter()
    if profiled:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            results = script.run(argv)
        for e in prof.events():
            if e.name.startswith("cam_eval/"):
                ranges[e.name[len("cam_eval/"):]] += e.time_range.elapsed_us() / 1e6
    else:
        results = script.run(argv)
    return results, time.perf_counter() - start, results["seconds"], dict(ranges)


def main() -> None:
    p = argparse.ArgumentParser(description="DuPL CAM evaluation benchmark", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc", help="which evaluation")
    p.add_argument("--data_folder", help="VOC2012 folder, or COCO image folder (default: synthetic demo_data)")
    p.add_argument("--split", default="train", help="split whose first images are evaluated")
    p.add_argument("--num_images", type=int, default=40, help="images to evaluate")
    p.add_argument("--model_path", help="checkpoint (default: random weights of --backbone)")
    p.add_argument("--backbone", default="deit_tiny_patch16_224", help="timm encoder without --model_path")
    p.add_argument("--size", type=int, default=paper("crop_size"), help="CAM input side (the evaluation's --size)")
    p.add_argument("--train_batch", type=int, default=4, help="images per CAM call of the floor (a training batch)")
    p.add_argument("--batch_size", type=int, help="the evaluation's --batch_size (default: its default)")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "amp"), default=["fp32", "amp"],
                   help="fp32 and / or --amp (bf16 autocast)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    root = dataset_folder(args.dataset, args.data_folder)
    layout = voc_layout(root) if args.dataset == "voc" else coco_layout(root)
    script, classes = (eval_cam_voc, 21) if args.dataset == "voc" else (eval_cam_coco, 81)
    work = tempfile.mkdtemp(prefix="bench_cam_eval_")
    lists = os.path.join(work, "lists")
    os.makedirs(lists)
    count = subset_lists(layout, args.split, args.num_images, lists)
    model_path = args.model_path
    if not model_path:
        model_path = random_checkpoint(os.path.join(work, "random.pth"), args.backbone, classes)
    net = load_model(model_path, None if args.model_path else args.backbone, classes, None, device)
    data = EvalDataset(layout, lists, args.split, stats=net.input_stats)
    images = [data[i][1] for i in range(len(data))]

    results = {}
    for precision in args.precisions:
        amp = resolve_amp(precision == "amp", device)
        floor = {b: cam_passes(net, images, args.size, b, device, amp) for b in sorted({1, args.train_batch})}
        argv = ["--data_folder", root, "--list_folder", lists, "--infer_set", args.split,
                "--model_path", model_path, "--size", str(args.size),
                "--num_workers", "1"] + (["--batch_size", str(args.batch_size)] if args.batch_size else []) + ([] if args.model_path else ["--backbone", args.backbone]) \
            + (["--cpu"] if device.type == "cpu" else []) + (["--amp"] if amp else [])
        scores, whole, loop, _ = evaluation(script, argv + ["--work_dir", os.path.join(work, precision)])
        again, _, profiled_loop, ranges = evaluation(script, argv + ["--work_dir", os.path.join(work, precision + "_p")],
                                                     profiled=True)
        same = all(scores["scores"][c]["miou"] == again["scores"][c]["miou"] for c in scores["scores"])
        if not same:
            raise SystemExit(f"{precision}: two runs of the same evaluation gave different scores")
        best = min(floor.values())
        ranges["rest_of_loop"] = profiled_loop - sum(ranges.get(r, 0.0) for r in RANGES)
        results[precision] = {
            "amp": amp, "images": count, "batch_size": scores["batch_size"],
            "cam_passes_s": {f"batch_{b}": s for b, s in floor.items()},
            "eval_whole_s": whole, "eval_loop_s": loop, "loop_over_cam_passes": loop / best,
            "profiled_loop_s": profiled_loop, "breakdown_s": ranges,
            "miou": {c: s["miou"] for c, s in scores["scores"].items()},
        }
        print(f"{precision}: {count} images at {args.size}: CAM passes "
              + ", ".join(f"{s:.1f} s (batch {b})" for b, s in floor.items())
              + f"; evaluation {whole:.1f} s, loop {loop:.1f} s = {loop / best:.2f}x the CAM passes; "
              f"profiled loop {profiled_loop:.1f} s: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in ranges.items()), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    write_result(args.json, "bench_cam_eval.py", {
        "device": str(device), "dataset": args.dataset, "size": args.size, "batch_size": scores["batch_size"],
        "batch_size_flag": args.batch_size, "train_batch": args.train_batch,
        "backbone": args.backbone if not args.model_path else "from --model_path", "results": results})


if __name__ == "__main__":
    main()
