"""Shared set-up of the benchmark scripts."""
import os

import torch

from datasets import synthetic

DEMO_VOC = os.path.join("demo_data", "VOC2012")


def voc_folder(data_folder=None) -> str:
    """``data_folder``, or the synthetic demo dataset (written first when it is missing)."""
    if data_folder:
        return data_folder
    if not os.path.isdir(DEMO_VOC):
        synthetic.write_all(os.path.dirname(DEMO_VOC), coco=False)
    return DEMO_VOC


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
