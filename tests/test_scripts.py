"""The user-facing entry points run from a fresh checkout and fail with one-line messages."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_demo_writes_data_derives_lists_and_prints_the_baseline(tmp_path):
    out = tmp_path / "demo"
    res = _run("demo.py", "--out", str(out), "--no-train")
    assert res.returncode == 0, res.stderr
    assert (out / "VOC2012" / "JPEGImages").is_dir() and (out / "coco").is_dir()
    assert (tmp_path / "demo" / "VOC2012_lists" / "train_aug.txt").is_file()
    assert "all-background baseline" in res.stdout and "mIoU" in res.stdout
    again = _run("demo.py", "--out", str(out), "--no-train")
    assert again.returncode == 0 and "kept existing" in again.stdout


