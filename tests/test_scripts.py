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




def test_make_install_puts_the_torch_of_torch_index_into_the_venv_first(tmp_path):
    venv = str(tmp_path / "venv")
    # run as a top-level make even when the tests themselves run under `make test`
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    make = ["make", "--no-print-directory", "-n", "install", f"VENV={venv}"]
    plain = subprocess.run(make, cwd=REPO, capture_output=True, text=True, env=env)
    cuda = subprocess.run(make + ["TORCH_INDEX=https://example.org/whl/cu126"], cwd=REPO,
                          capture_output=True, text=True, env=env)
    if plain.returncode != 0:
        pytest.skip("make is not available")
    lines = cuda.stdout.splitlines()
    torch_line = next(i for i, l in enumerate(lines) if "--index-url https://example.org/whl/cu126" in l)
    requirements = next(i for i, l in enumerate(lines) if "-r requirements.txt" in l)
    assert lines[0].endswith(f"-m venv {venv}") and 0 < torch_line < requirements
    assert f"{venv}/bin/python -m pip install torch torchvision" in lines[torch_line]
    assert "--index-url" not in plain.stdout and "-r requirements.txt" in plain.stdout
