"""Evaluation speed: multi-scale inference images/s, saved-logit bytes, CRF images/s per worker count.

    python benchmarks/bench_eval.py --backbone deit_base_patch16_224 --num_images 20 [--amp] \
        [--crf_workers 1 2 4] [--model_path CKPT] [--data_folder VOC2012] [--json out.json]

Inference: both students' multi-scale + flip logits (VOC rule, scales 1.0/1.5/1.25) of the val
images at their own size, after one warm-up image. Logits: bytes of the float16 ``.npz`` this
project saves per image against the float32 logits of both students the original saves. CRF: the
straightforward per-image loop in one process against :func:`utils.crf.run_crf` with each worker
count, on the same saved logits; the predictions must be identical.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import voc_folder  # noqa: E402
from datasets.layout import voc_layout  # noqa: E402
from datasets.prepare import ensure_lists  # noqa: E402
from datasets.segmentation import EvalDataset  # noqa: E402
from model.network import DualStudentNet  # noqa: E402
from utils.crf import dense_crf, probs_from_logits, run_crf  # noqa: E402
from utils.evaluation import crf_job  # noqa: E402
from utils.inference import load_model, select_branch, voc_msc_logits  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description="DuPL evaluation benchmark")
    p.add_argument("--data_folder", help="VOC2012-layout folder (default: synthetic demo_data)")
    p.add_argument("--model_path", help="checkpoint (default: random weights)")
    p.add_argument("--backbone", default="deit_base_patch16_224")
    p.add_argument("--num_images", type=int, default=20)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--crf_workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    layout = voc_layout(voc_folder(args.data_folder))
    lists = ensure_lists(layout, None, ["val"])
    data = EvalDataset(layout, lists, "val")
    count = min(args.num_images, len(data))
    if args.model_path:
        net = load_model(args.model_path, args.backbone, 21, -3, device)
    else:
        torch.manual_seed(0)
        net = DualStudentNet(args.backbone, 21).to(device).eval()

    work = tempfile.mkdtemp(prefix="bench_eval_")
    for d in ("logits", "crf", "crf_color"):
        os.makedirs(os.path.join(work, d))
    jobs, full_logits, pixels, saved_bytes, original_bytes = [], [], 0, 0, 0
    elapsed = 0.0
    for i in range(count + 1):
        img_id, image, _, _ = data[i % len(data)]
        x = image[None].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = [l.float() for l in voc_msc_logits(net, x)]
        chosen = select_branch(logits, "ensemble")[0].cpu().numpy()
        if i == 0:
            continue   # warm-up
        elapsed += time.perf_counter() - t
        path = os.path.join(work, "logits", img_id + ".npz")
        np.savez_compressed(path, logits=chosen.astype(np.float16))
        saved_bytes += os.path.getsize(path)
        full_logits.append(chosen)
        original_bytes += 2 * chosen.size * 4
        pixels += chosen.shape[1] * chosen.shape[2]
        jobs.append((img_id, layout.image_path("val", img_id), path, None, 21,
                     os.path.join(work, "crf"), os.path.join(work, "crf_color")))
    infer_rate = count / elapsed
    print(f"inference: {infer_rate:.2f} images/s ({args.backbone}, amp {args.amp}, {device}), "
          f"mean image {pixels / count:.0f} px; saved logits {saved_bytes / count / 2 ** 20:.2f} MiB "
          f"per image vs {original_bytes / count / 2 ** 20:.2f} MiB for two float32 students "
          f"({original_bytes / max(saved_bytes, 1):.1f}x smaller)", flush=True)

    from datasets.readers import read_image
    t = time.perf_counter()
    reference = []
    for job in jobs:   # the straightforward loop: one image after the other in this process
        image = read_image(job[1])
        with np.load(job[2]) as f:
            reference.append(dense_crf(image, probs_from_logits(f["logits"], image.shape[:2])))
    loop_rate = len(jobs) / (time.perf_counter() - t)
    print(f"CRF per-image loop: {loop_rate:.2f} images/s", flush=True)
    same_px = total_px = 0
    for job, ref, full in zip(jobs, reference, full_logits):   # float16 storage vs float32
        image = read_image(job[1])
        crf32 = dense_crf(image, probs_from_logits(full, image.shape[:2]))
        same_px += int((crf32 == ref).sum())
        total_px += ref.size
    fp16_agreement = same_px / max(total_px, 1)
    print(f"CRF on float16-saved logits vs float32 logits: {100 * fp16_agreement:.4f}% of pixels "
          "identical", flush=True)
    crf_rates = {}
    for workers in args.crf_workers:
        t = time.perf_counter()
        run_crf(jobs, crf_job, workers)
        rate = len(jobs) / (time.perf_counter() - t)
        from PIL import Image
        same = all(np.array_equal(np.array(Image.open(os.path.join(work, "crf", j[0] + ".png"))), r)
                   for j, r in zip(jobs, reference))
        crf_rates[workers] = rate
        print(f"CRF {workers} worker(s): {rate:.2f} images/s ({rate / workers:.2f} per worker), "
              f"identical to the loop: {same}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "inference_images_per_s": infer_rate,
                       "saved_mib_per_image": saved_bytes / count / 2 ** 20,
                       "original_mib_per_image": original_bytes / count / 2 ** 20,
                       "crf_loop_images_per_s": loop_rate, "crf_images_per_s": crf_rates,
                       "crf_fp16_pixel_agreement": fp16_agreement}, f, indent=1)


if __name__ == "__main__":
    main()
