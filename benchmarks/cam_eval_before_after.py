"""The CAM evaluation of an earlier commit against this checkout: wall time and results.

    python benchmarks/cam_eval_before_after.py --before COMMIT [--model_path CKPT] [--dataset voc|coco] \
        [--data_folder DIR] [--infer_set train] [--sizes 128 448] [--json out.json] \
        [-- extra eval_cam_voc.py flags]

Checks out ``COMMIT`` into a temporary ``git worktree``, then runs ``eval_cam_<dataset>.py`` of that
commit and of this checkout one after the other (never at once) as separate processes with the
same checkpoint (without ``--model_path``: random weights of ``--backbone``), data, split and
``--size``, and records each run's wall time and whether the two
``results.json`` hold the same scores, sweep and best thresholds (they must: a speed-up may not
change a number).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import dataset_folder, random_checkpoint, write_result  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ("scores", "threshold_sweep", "best_threshold")


def run_eval(checkout: str, script: str, argv: list, work_dir: str) -> tuple:
    """``script`` of ``checkout`` in its own process: ``(seconds, results.json)``."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, os.path.join(checkout, script), *argv, "--work_dir", work_dir],
                         cwd=checkout, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{script} in {checkout} failed:\n{res.stderr[-3000:]}")
    with open(os.path.join(work_dir, "results.json")) as f:
        return seconds, json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--before", required=True, help="the earlier commit")
    p.add_argument("--model_path", help="checkpoint both evaluate (default: random weights of --backbone)")
    p.add_argument("--backbone", default="deit_tiny_patch16_224", help="timm encoder without --model_path")
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc", help="eval_cam_voc.py or eval_cam_coco.py")
    p.add_argument("--data_folder", help="VOC2012 folder or COCO image folder (default: the demo's synthetic one)")
    p.add_argument("--infer_set", default="train", help="split")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 448], help="--size values to run")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("extra", nargs="*", help="more eval_cam_voc.py flags (after --)")
    args = p.parse_args()

    script = f"eval_cam_{args.dataset}.py"
    data = dataset_folder(args.dataset, args.data_folder)
    work = tempfile.mkdtemp(prefix="cam_before_after_")
    before = os.path.join(work, "before")
    subprocess.run(["git", "worktree", "add", "--detach", before, args.before], cwd=REPO, check=True,
                   capture_output=True)
    model, extra = args.model_path, list(args.extra)
    if not model:
        model = random_checkpoint(os.path.join(work, "random.pth"), args.backbone, 21 if args.dataset == "voc" else 81)
        extra += ["--backbone", args.backbone]
    rows = []
    try:
        for size in args.sizes:
            argv = ["--data_folder", os.path.abspath(data), "--model_path", os.path.abspath(model),
                    "--infer_set", args.infer_set, "--size", str(size), "--cpu", *extra]
            old_s, old = run_eval(before, script, argv, os.path.join(work, f"before_{size}"))
            new_s, new = run_eval(REPO, script, argv, os.path.join(work, f"after_{size}"))
            same = all(old[k] == new[k] for k in COMPARED)
            rows.append({"size": size, "images": new["num_images"], "before_s": old_s, "after_s": new_s,
                         "speedup": old_s / new_s, "identical_results": same,
                         "miou": {c: s["miou"] for c, s in new["scores"].items()}})
            print(f"--size {size}, {new['num_images']} images: {old_s:.1f} s before, {new_s:.1f} s after "
                  f"({old_s / new_s:.2f}x); results identical: {same}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", before], cwd=REPO, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    write_result(args.json, "cam_eval_before_after.py", {"before": args.before, "dataset": args.dataset,
                                                         "runs": rows})
    if not all(r["identical_results"] for r in rows):
        raise SystemExit("the results differ")


if __name__ == "__main__":
    main()
