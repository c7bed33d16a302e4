"""The user-facing entry points run from a fresh checkout and fail with one-line messages."""
import os
import re
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




# a Python for scripts/install.sh: `-m venv DIR` makes DIR/bin/python (this script again); every
# other call (pip) is written to $FAKE_LOG with copies of its -r / -c files, and fails when it
# contains $FAKE_FAILS
FAKE_PYTHON = """#!/bin/bash
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
echo "$*" >> "$FAKE_LOG"
n=$(wc -l < "$FAKE_LOG")
prev=
for a in "$@"; do
    case "$prev" in -r|-c) cp "$a" "$FAKE_LOG.$n${prev}" ;; esac
    prev=$a
done
[ -n "$FAKE_FAILS" ] && [[ "$*" == *"$FAKE_FAILS"* ]] && exit 1
exit 0
"""


@pytest.fixture
def install(tmp_path):
    if subprocess.run(["make", "--version"], capture_output=True).returncode != 0:
        pytest.skip("make is not available")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "pip.log"
    # run as a top-level make even when the tests themselves run under `make test`
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def run(*settings, fails=""):
        for p in tmp_path.glob("pip.log*"):
            p.unlink()
        res = subprocess.run(["make", "--no-print-directory", "install", f"PYTHON={fake}",
                              f"VENV={tmp_path / 'venv'}", *settings], cwd=REPO, capture_output=True,
                             text=True, env=dict(base, FAKE_LOG=str(log), FAKE_FAILS=fails))
        calls = log.read_text().splitlines() if log.exists() else []
        files = {p.name[len("pip.log."):]: p.read_text() for p in tmp_path.glob("pip.log.*")}
        return res, calls, files
    run.venv = tmp_path / "venv"
    return run


def _pins(text):
    return {line.split("==")[0] for line in text.splitlines() if "==" in line and not line.startswith("#")}


def _lock():
    return open(os.path.join(REPO, "requirements.lock")).read()


def test_make_install_takes_requirements_txt_at_the_locks_versions_once(install):
    res, calls, files = install()
    assert res.returncode == 0, res.stderr
    assert len(calls) == 1 and calls[0].startswith("-m pip install -r requirements.txt -c ")
    assert files["1-c"] == _lock() and {"torch", "numpy", "pydensecrf2", "timm"} <= _pins(_lock())
    # every requirement is pinned by the lock
    names = {re.split(r"[<>=!~ ]", line)[0].lower() for line in open(os.path.join(REPO, "requirements.txt"))
             if line.strip() and not line.startswith("#")}
    assert names <= {n.lower() for n in _pins(_lock())}
    again = install()
    assert again[0].returncode == 0 and again[1] == []          # the same settings: nothing to do
    assert install("LOCK=")[1] == ["-m pip install -r requirements.txt"]
    assert install()[1] == []                                    # `make demo` keeps the newest versions
    assert install("LOCK=requirements.lock")[1][0].startswith("-m pip install -r requirements.txt -c ")


def test_torch_index_is_honoured_whenever_given_and_kept_after(install):
    install()
    res, calls, files = install("TORCH_INDEX=https://example.org/whl/cu126")
    assert res.returncode == 0, res.stderr
    torch_pin = next(line for line in _lock().splitlines() if line.startswith("torch=="))
    assert calls[0] == "-m pip uninstall -y torch torchvision"
    assert calls[1].startswith(f"-m pip install {torch_pin} torchvision==")
    assert calls[1].endswith("--index-url https://example.org/whl/cu126")
    assert calls[2].startswith("-m pip install -r requirements.txt -c ")
    # the index's torch keeps its own CUDA packages; the lock pins everything else
    pins = _pins(files["3-c"])
    assert "numpy" in pins and not {"torch", "torchvision", "triton"} & pins
    assert not any(p.startswith(("nvidia-", "cuda-")) for p in pins)
    assert install()[1] == []                                    # remembered: a plain call keeps it
    other = install("TORCH_INDEX=https://example.org/whl/cu128")[1]
    assert "--index-url https://example.org/whl/cu128" in other[1]


def test_without_a_compiler_everything_but_pydensecrf2_is_installed(install):
    res, calls, files = install("PYDENSECRF=0")
    assert res.returncode == 0, res.stderr
    assert "pydensecrf2" not in files["1-r"] and "timm" in files["1-r"]
    assert "pydensecrf2" not in _pins(files["1-c"]) and "torch" in _pins(files["1-c"])
    # `make demo` / `make test` afterwards keep that venv: no attempt to build pydensecrf2
    res, calls, _ = install()
    assert res.returncode == 0 and calls == []
    assert "PYDENSECRF=0" in (install.venv / ".settings").read_text()


def test_install_failures_are_one_line_errors(install):
    res, _, _ = install(fails="-r")
    assert res.returncode != 0 and "LOCK=" in res.stderr
    assert "error: pip could not install requirements.txt at the versions of requirements.lock" in res.stderr
    res, _, _ = install("TORCH_INDEX=https://example.org/whl/cu999", fails="--index-url")
    assert res.returncode != 0 and "is not on https://example.org/whl/cu999" in res.stderr
    res, calls, _ = install("LOCK=missing.lock")
    assert res.returncode != 0 and "error: LOCK=missing.lock does not exist" in res.stderr and calls == []
    res, _, _ = install("PYDENSECRF=no")
    assert res.returncode != 0 and "error: PYDENSECRF=no" in res.stderr
