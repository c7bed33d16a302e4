"""Evaluation speed: multi-scale inference images/s, saved-logit bytes, CRF images/s per worker count.

    python benchmarks/bench_eval.py --backbone deit_base_patch16_224 --num_images 20 [--amp] \
        [--crf_workers 1 2 4] [--model_path CKPT] [--data_folder VOC2012] [--json out.json]

Inference: both students' multi-scale + flip logits (VOC rule, scales 1.0/1.5/1.25) of the val
images at their own size and the ensemble's probabilities on the host, after one warm-up image.
Logits: the time to save them and the bytes of the file this project writes per image
(:func:`engine.inference.save_logits`) against both students' full-resolution float32 logits. CRF:
the straightforward per-image loop in one process (load the logits, CRF, write the index and colour
PNGs) against :class:`engine.crf.PydenseCRFDriver` with each worker count doing the same jobs; the predictions
must be identical. It also checks that CRF from the saved file equals CRF from the in-memory
probabilities the evaluation refines.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import sync, voc_folder, write_result  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
from utils.precision import add_amp_flag, autocast, resolve_amp  # noqa: E402
from datasets.layout import voc_layout  # noqa: E402
from datasets.lists import ensure_lists  # noqa: E402
from datasets.segmentation import EvalDataset  # noqa: E402
from datasets.readers import read_image  # noqa: E402
from model.network import DualStudentNet  # noqa: E402
from engine.crf import PydenseCRFDriver, dense_crf, probs_from_logits  # noqa: E402
from engine.evaluation import crf_inputs, crf_outputs, save_png  # noqa: E402
from engine.inference import (VOC_EVAL_SCALES, load_logits, load_model, merge_voc,  # noqa: E402
                             save_logits, select_branch, voc_raw_logits)
from model.settings import paper  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description="DuPL evaluation benchmark",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data_folder", help="VOC2012-layout folder (default: synthetic demo_data)")
    p.add_argument("--model_path", help="checkpoint (default: random weights)")
    p.add_argument("--backbone", default=paper("backbone"), help="timm ViT/DeiT name")
    p.add_argument("--num_images", type=int, default=20, help="images to evaluate")
    add_amp_flag(p)
    p.add_argument("--crf_workers", type=int, nargs="+", default=[1, 2],
                   help="worker counts to time against the one-core loop; 0 skips the CRF part")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    args.amp = resolve_amp(args.amp, device)
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
    for d in ("logits", "crf", "crf_color", "loop", "loop_color"):
        os.makedirs(os.path.join(work, d))
    jobs, in_memory, pixels, saved_bytes, original_bytes = [], [], 0, 0, 0
    infer_s = save_s = 0.0
    for i in range(count + 1):
        img_id, image, _, _ = data[i % len(data)]
        x = image[None].to(device)
        size = tuple(image.shape[-2:])
        sync(device)
        t = time.perf_counter()
        with autocast(device, args.amp):
            raw = voc_raw_logits(net, x)
        chosen = select_branch(merge_voc(raw, size), "ensemble")
        probs = chosen.softmax(1)[0].cpu().numpy()
        t_saved = time.perf_counter()
        path = os.path.join(work, "logits", img_id + ".npz")
        save_logits(path, "voc", raw, size, VOC_EVAL_SCALES)
        if i == 0:
            continue   # warm-up
        infer_s += t_saved - t
        save_s += time.perf_counter() - t_saved
        saved_bytes += os.path.getsize(path)
        original_bytes += 2 * chosen.numel() * 4   # both students' full-resolution float32 logits
        pixels += size[0] * size[1]
        in_memory.append(probs)
        jobs.append((img_id, layout.image_path("val", img_id), (path, "ensemble"), None, 21,
                     os.path.join(work, "crf"), os.path.join(work, "crf_color")))
    infer_rate = count / infer_s
    print(f"inference: {infer_rate:.2f} images/s ({args.backbone}, amp {args.amp}, {device}), "
          f"mean image {pixels / count:.0f} px; saving the logits {1000 * save_s / count:.1f} ms per "
          f"image, {saved_bytes / count / 2 ** 20:.3f} MiB vs {original_bytes / count / 2 ** 20:.2f} MiB "
          f"for two float32 students at full resolution ({original_bytes / max(saved_bytes, 1):.1f}x "
          "smaller)", flush=True)

    result = {"device": str(device), "backbone": args.backbone, "amp": args.amp,
              "mean_image_pixels": pixels / count, "inference_images_per_s": infer_rate,
              "save_ms_per_image": 1000 * save_s / count,
              "saved_mib_per_image": saved_bytes / count / 2 ** 20,
              "original_mib_per_image": original_bytes / count / 2 ** 20}
    if 0 in args.crf_workers:
        write_result(args.json, "bench_eval.py", result)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the loop on one core, like each worker
    t = time.perf_counter()
    reference = []
    for job in jobs:   # the straightforward loop: one image after the other, same inputs and outputs
        image = read_image(job[1])
        label = dense_crf(image, probs_from_logits(load_logits(*job[2]), image.shape[:2]))
        save_png(os.path.join(work, "loop", job[0] + ".png"), label)
        save_png(os.path.join(work, "loop_color", job[0] + ".png"), label, palette=True)
        reference.append(label)
    loop_rate = len(jobs) / (time.perf_counter() - t)
    torch.set_num_threads(threads)
    print(f"CRF per-image loop: {loop_rate:.2f} images/s", flush=True)
    same_px = total_px = 0
    for job, ref, probs in zip(jobs, reference, in_memory):   # what evaluation refines vs the file
        crf = dense_crf(read_image(job[1]), probs)
        same_px += int((crf == ref).sum())
        total_px += ref.size
    file_agreement = same_px / max(total_px, 1)
    print(f"CRF from the saved file vs from the in-memory probabilities: {100 * file_agreement:.4f}% "
          "of pixels identical", flush=True)
    crf_rates = {}
    for workers in args.crf_workers:
        t = time.perf_counter()
        crf = PydenseCRFDriver(workers, crf_inputs, crf_outputs)
        for job in jobs:
            crf.submit(job)
        crf.close()
        rate = len(jobs) / (time.perf_counter() - t)
        same = all(np.array_equal(np.array(Image.open(os.path.join(work, "crf", j[0] + ".png"))), r)
                   for j, r in zip(jobs, reference))
        crf_rates[workers] = rate
        print(f"CRF {workers} worker(s): {rate:.2f} images/s ({rate / workers:.2f} per worker, "
              f"{rate / workers / loop_rate:.2f}x the loop per core), identical to the loop: {same}",
              flush=True)
    result.update({"crf_loop_images_per_s": loop_rate, "crf_images_per_s": crf_rates,
                   "crf_file_vs_memory_pixel_agreement": file_agreement})
    write_result(args.json, "bench_eval.py", result)


if __name__ == "__main__":
    main()
