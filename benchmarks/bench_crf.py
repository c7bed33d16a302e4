"""Dense CRF speed and agreement: pydensecrf (per core and on all cores) against the PyTorch CRF
(on the CPU, and batched on the GPU when there is one), at VOC and COCO sizes.

    python benchmarks/bench_crf.py [--sizes voc coco] [--num_images 8] [--batches 1 4 8 16]
        [--json out.json]

Inputs are synthetic scenes at the real image sizes (VOC ~500x375 with 21 classes, COCO ~640x480
with 81 classes) with network-like probabilities (:func:`benchmarks.common.network_like_probs`:
the mask seen at 1/16 of the resolution, confused and noisy, upsampled), so the CRF has real work
to do. Prints images/s of each implementation, the share of pixels whose labels equal
pydensecrf's and the peak memory of the torch CRF (the GPU's allocator on a GPU, the growth of
the process's resident memory on the CPU).
"""
import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datasets import synthetic  # noqa: E402
from engine.crf import PydenseCRFDriver, dense_crf, pydensecrf_available  # noqa: E402
from engine.crf_torch import dense_crf_batch  # noqa: E402

from benchmarks.common import network_like_probs, sync, write_result  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402

SIZES = {"voc": ((375, 500), 21), "coco": ((480, 640), 81)}


def scenes(kind: str, n: int, size=None, seed: int = 0):
    """``n`` (image, probs) pairs of the synthetic set at ``kind``'s image size (or ``size``) and
    class count."""
    (h, w), c = SIZES[kind]
    if size:
        h, w = size
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "voc":
            root = synthetic.write_voc(tmp, num_train=0, num_val=n, num_test=0, seed=seed, image_size=(h, w))
            folder = os.path.join(root, "SegmentationClassAug")
            images = os.path.join(root, "JPEGImages")
        else:
            root = synthetic.write_coco(tmp, num_train=0, num_val=n, seed=seed, image_size=(h, w))
            folder = os.path.join(root, "SegmentationClass", "val2014")
            images = os.path.join(root, "JPEGImages", "val2014")
        out = []
        for i, name in enumerate(sorted(os.listdir(folder))[:n]):
            stem = os.path.splitext(name)[0]
            mask = np.array(Image.open(os.path.join(folder, name)))
            image = np.array(Image.open(os.path.join(images, stem + ".jpg")).convert("RGB"))
            out.append((image, network_like_probs(mask, c, seed=i)))
    return out


def _labels(pair, labels: np.ndarray) -> np.ndarray:
    """What the pydensecrf workers hand back for a pair: its labels."""
    return labels


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_size(kind: str, n: int, batches, devices, workers: int, size=None) -> dict:
    pairs = scenes(kind, n, size)
    (h, w), c = pairs[0][0].shape[:2], SIZES[kind][1]
    res = {"images": len(pairs), "size": [h, w], "classes": c}
    print(f"-- {kind}: {len(pairs)} images of {w}x{h}, {c} classes", flush=True)
    ref = None
    if pydensecrf_available():
        t0 = time.perf_counter()
        ref = [dense_crf(*p) for p in pairs]
        one = len(pairs) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        crf = PydenseCRFDriver(workers, finish=_labels)
        for pair in pairs:
            crf.submit(pair)
        multi = crf.close()
        many = len(pairs) / (time.perf_counter() - t0)
        assert all(np.array_equal(a, b) for a, b in zip(ref, multi))
        res["pydensecrf"] = {"images_per_s_one_core": one, "images_per_s_all_cores": many, "workers": workers}
        print(f"pydensecrf: {one:.3f} images/s on one core, {many:.3f} on {workers} workers", flush=True)
    for dev in devices:
        device = torch.device(dev)
        for batch in (batches if device.type == "cuda" else [1]):
            for threads in ([1, torch.get_num_threads()] if device.type == "cpu" else [None]):
                if threads is not None:
                    old = torch.get_num_threads()
                    torch.set_num_threads(threads)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    dense_crf_batch([pairs[0][0]], [pairs[0][1]], device=device)  # warm-up
                rss0 = rss_mib()
                sync(device)
                t0 = time.perf_counter()
                labels = []
                for s in range(0, len(pairs), batch):
                    part = pairs[s:s + batch]
                    labels += dense_crf_batch([p[0] for p in part],
                                              [torch.from_numpy(p[1]).to(device) for p in part], device=device)
                sync(device)
                rate = len(pairs) / (time.perf_counter() - t0)
                key = f"torch_{device.type}" + (f"_batch{batch}" if device.type == "cuda" else f"_{threads}threads")
                entry = {"images_per_s": rate, "batch": batch}
                if device.type == "cuda":
                    entry["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                    mem = f"peak GPU memory {entry['peak_memory_gib']:.2f} GiB"
                else:
                    entry["threads"] = threads
                    entry["rss_growth_mib"] = rss_mib() - rss0
                    mem = f"resident memory +{entry['rss_growth_mib']:.0f} MiB"
                if ref is not None:
                    same = sum(int((a.numpy() == b).sum()) for a, b in zip(labels, ref))
                    entry["pixel_agreement"] = same / sum(b.size for b in ref)
                    mem += f", {100 * entry['pixel_agreement']:.3f}% of pixels equal pydensecrf's"
                res[key] = entry
                print(f"{key}: {rate:.3f} images/s, {mem}", flush=True)
                if threads is not None:
                    torch.set_num_threads(old)
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["voc", "coco"], choices=sorted(SIZES),
                   help="image sizes and class counts to time")
    p.add_argument("--num_images", type=int, default=8, help="synthetic scenes per size")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16],
                   help="images per torch CRF batch on the GPU")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--workers", type=int, default=None, help="pydensecrf workers (default: all cores)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="one image size for both sets (a short rehearsal), instead of the real ones")
    p.add_argument("--json", help="write the numbers to this file")
    args = p.parse_args(argv)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    workers = args.workers or len(os.sched_getaffinity(0))
    out = {"cores": workers, "torch_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for kind in args.sizes:
        out[kind] = bench_size(kind, args.num_images, args.batches, devices, workers, args.size)
    return write_result(args.json, "bench_crf.py", out, indent=2)


if __name__ == "__main__":
    main()
