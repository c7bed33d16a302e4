"""Evaluation numbers kept on disk: ``results.json`` and the per-class table as text.

Every evaluation (training validation, ``eval_seg_voc.py``, ``eval_seg_coco_ddp.py``,
``eval_cam_voc.py``) writes its scores next to its outputs, so a run of hours does not lose its
numbers with its terminal. Both files are written atomically (temporary file, then rename).
"""
import json
import math
import os
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from utils.safe_io import write_atomically

RESULTS_JSON = "results.json"
RESULTS_TXT = "results.txt"


def _number(v) -> Optional[float]:
    v = float(v)
    return None if math.isnan(v) else v


def scores_to_dict(scores: Mapping[str, dict], class_names: Sequence[str]) -> Dict[str, dict]:
    """``{column: ConfusionMatrix.compute() output}`` -> JSON-ready ``{column: {"miou", "pAcc",
    "mAcc", "iou": {class name: IoU or None}}}`` (IoU in [0, 1]; None where undefined or where the
    class has no ground truth, as the printed table shows ``-``)."""
    out = {}
    for column, s in scores.items():
        present = np.asarray(s["present"], dtype=bool)
        out[column] = {
            "miou": _number(s["miou"]), "pAcc": _number(s["pAcc"]), "mAcc": _number(s["mAcc"]),
            "iou": {name: (_number(v) if present[i] else None)
                    for i, (name, v) in enumerate(zip(class_names, np.asarray(s["iou"])))},
        }
    return out


def write_results(folder: str, scores: Mapping[str, dict], class_names: Sequence[str], table: str,
                  **meta) -> str:
    """Write ``folder/results.json`` (``meta`` such as split, scales, branch rule, checkpoint and
    its step, plus ``"scores"``) and ``folder/results.txt`` (``table``); returns the json path."""
    os.makedirs(folder, exist_ok=True)
    payload = dict(meta)
    payload["scores"] = scores_to_dict(scores, class_names)
    path = os.path.join(folder, RESULTS_JSON)
    text = json.dumps(payload, indent=1, default=str) + "\n"
    write_atomically(path, lambda f: f.write(text))
    write_atomically(os.path.join(folder, RESULTS_TXT), lambda f: f.write(table.rstrip("\n") + "\n"))
    return path
