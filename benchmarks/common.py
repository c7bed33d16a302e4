"""Shared set-up of the benchmark scripts, and the dense CRF's inputs that the CRF's tests share
(:func:`network_like_probs`)."""
import datetime
import json
import os
import subprocess
import sys
from typing import Optional

import cv2
import numpy as np
import torch

from datasets import synthetic
from utils.labels import IGNORE_INDEX
from utils.precision import cpu_description

DEMO_VOC = os.path.join("demo_data", "VOC2012")
DEMO_COCO = os.path.join("demo_data", "coco", "JPEGImages")


def machine() -> str:
    """``N CPU cores (model)[, GPU]`` of this process, for a result file."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu_description()}{gpu}"


def git_head() -> str:
    """The full commit hash of the checkout (``$COMMIT`` when set), else ``unknown``."""
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def result_header(script: str) -> dict:
    """What every result file records: date, machine, commit, torch version and the command."""
    return {"date": datetime.date.today().isoformat(), "machine": machine(), "commit": git_head(),
            "torch": torch.__version__, "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:])}


def write_result(path: Optional[str], script: str, payload: dict, indent: int = 1) -> dict:
    """``payload`` under the result header of ``script`` (:func:`result_header`), written to
    ``path`` as JSON when one is given; returns it."""
    out = {**result_header(script), **payload}
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=indent)
    return out


def voc_folder(data_folder=None) -> str:
    """``data_folder``, or the synthetic demo dataset (written first when it is missing)."""
    if data_folder:
        return data_folder
    if not os.path.isdir(DEMO_VOC):
        synthetic.write_all(os.path.dirname(DEMO_VOC), coco=False)
    return DEMO_VOC


def dataset_folder(dataset: str, data_folder=None) -> str:
    """``data_folder``, or the synthetic demo dataset's VOC2012 folder / COCO image folder
    (written first when it is missing)."""
    if dataset == "voc":
        return voc_folder(data_folder)
    if data_folder:
        return data_folder
    if not os.path.isdir(DEMO_COCO):
        synthetic.write_all(os.path.dirname(os.path.dirname(DEMO_COCO)))
    return DEMO_COCO


def random_checkpoint(path: str, backbone: str, num_classes: int) -> str:
    """A checkpoint of a randomly initialised student pair (seed 0) at ``path``, for timings
    that do not depend on the weights; returns ``path``."""
    from model.network import DualStudentNet
    torch.manual_seed(0)
    torch.save({"model": DualStudentNet(backbone, num_classes).state_dict()}, path)
    return path


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_like_probs(mask: np.ndarray, num_classes: int, seed: int = 0, stride: int = 16,
                       confusion: float = 0.1) -> np.ndarray:
    """Class probabilities ``(C, H, W)`` float32 shaped like a segmentation network's output for
    the ground truth ``mask`` (255 read as background): the mask seen at 1/``stride`` of the
    resolution (a ViT's patch grid), a fraction ``confusion`` of the patches leaning to a random
    class, Gaussian noise, then bilinear upsampling and softmax. Boundaries come out blurred and
    some regions wrong, which is what a dense CRF refines (inputs for the CRF's tests and
    benchmarks)."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    gt = np.where(mask == IGNORE_INDEX, 0, mask).astype(np.int64)
    gh, gw = max(1, h // stride), max(1, w // stride)
    onehot = np.zeros((h, w, num_classes), np.float32)
    np.put_along_axis(onehot, gt[..., None], 1.0, axis=2)
    small = np.stack([cv2.resize(onehot[..., c], (gw, gh), interpolation=cv2.INTER_AREA)
                      for c in range(num_classes)])                    # (C, gh, gw) class shares
    logits = 4.0 * small + rng.normal(0.0, 0.8, small.shape).astype(np.float32)
    wrong = rng.random((gh, gw)) < confusion
    other = rng.integers(0, num_classes, (gh, gw))
    ys, xs = np.nonzero(wrong)
    logits[other[ys, xs], ys, xs] += 3.0
    up = np.stack([cv2.resize(l, (w, h), interpolation=cv2.INTER_LINEAR) for l in logits])
    up = np.exp(up - up.max(0, keepdims=True))
    return (up / up.sum(0, keepdims=True)).astype(np.float32)
