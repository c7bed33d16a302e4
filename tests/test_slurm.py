"""scripts/slurm/*.sbatch: the paper's global batch on every allocation, and the launch line run
here with SLURM's variables and commands faked (srun runs its command, scontrol and scancel act on
this machine): a few CPU iterations, a stop before the time limit with a checkpoint, a requeue and
the requeued job continuing from that checkpoint."""
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from utils.checkpoint import read_checkpoint
from model.settings import paper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = {"voc": os.path.join(REPO, "scripts", "slurm", "train_voc.sbatch"),
          "coco": os.path.join(REPO, "scripts", "slurm", "train_coco.sbatch")}
TINY = ["--backbone", "deit_tiny_patch16_224", "--no-pretrained", "--crop_size", "48", "--num_workers", "0",
        "--no-tensorboard", "--warmup_iters", "2", "--lr", "1e-4", "--cam_scales", "1.0 0.5", "--cpu"]

# srun: drop srun's own options (all written --name=value), note the step's pid, run the command
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == -* ]]; do shift; done
echo "$@" >> "$FAKE_SLURM/srun.args"
[ -n "$FAKE_SLURM_DRY" ] && exit 0
echo $$ >> "$FAKE_SLURM/step.pids"
[ -n "$FAKE_SLURM_SLEEP" ] && exec sleep "$FAKE_SLURM_SLEEP"
exec "$@"
"""
# scontrol: this machine is the only node; a requeue is written down
FAKE_SCONTROL = """#!/bin/bash
case "$1 $2" in
  "show hostnames") echo 127.0.0.1 ;;
  "requeue "*) [ -n "$FAKE_SLURM_REQUEUE_FAILS" ] && exit 1; echo "requeue $2" >> "$FAKE_SLURM/requeue" ;;
  *) exit 1 ;;
esac
"""
# scancel --signal=SIG JOB: the signal goes to the steps (not to the batch script)
FAKE_SCANCEL = """#!/bin/bash
sig=${1#--signal=}
for pid in $(cat "$FAKE_SLURM/step.pids"); do kill -s "$sig" "$pid" 2>/dev/null; done
"""


@pytest.fixture
def fake_slurm(tmp_path):
    folder = tmp_path / "fake_slurm"
    folder.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL)):
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def env(nodes: int, gpus: int, dry: bool = False, **extra):
        extra.setdefault("SLURM_CPUS_PER_TASK", 16)
        return dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM=str(folder),
                    FAKE_SLURM_DRY="1" if dry else "", SLURM_NNODES=str(nodes), SLURM_GPUS_ON_NODE=str(gpus),
                    SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node001", PYTHON=sys.executable,
                    MASTER_PORT=str(29100 + os.getpid() % 90), OMP_NUM_THREADS="1", PYTHONPATH=REPO,
                    **{k: str(v) for k, v in extra.items()})
    env.folder = folder
    return env


def _header(path: str):
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", open(path).read(), re.M))


def _launch_args(fake_slurm):
    lines = (fake_slurm.folder / "srun.args").read_text().splitlines()
    (fake_slurm.folder / "srun.args").unlink()
    return lines[-1].split()


def _flag(args, name):
    return args[args.index(name) + 1]


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_the_allocation_times_the_images_per_gpu_and_accumulation_is_the_papers_batch(dataset, fake_slurm):
    header = _header(SBATCH[dataset])
    assert header["signal"].startswith("B:USR1@") and int(header["signal"].split("@")[1]) >= 300
    assert "requeue" in header and header["ntasks-per-node"] == "1"
    text = open(SBATCH[dataset]).read()
    assert int(re.search(r"^PAPER_BATCH=(\d+)", text, re.M).group(1)) == paper("global_batch", dataset)
    nodes, gpus = int(header["nodes"]), int(header["gpus-per-node"])
    allocations = [(nodes, gpus), (1, 1), (1, 2), (2, 2), (1, 4), (2, 4), (1, 8)]
    for n, g in allocations:
        res = subprocess.run(["bash", SBATCH[dataset], "--data_folder", "X"], cwd=REPO, capture_output=True,
                             text=True, env=fake_slurm(n, g, dry=True), timeout=60)
        if paper("global_batch", dataset) % (n * g * (2 if dataset == "voc" else 1)):
            assert res.returncode == 2 and "error:" in res.stderr and "global batch" in res.stderr
            assert (n, g) != (nodes, gpus)
            continue
        assert res.returncode == 0, res.stderr
        args = _launch_args(fake_slurm)
        batch = (int(_flag(args, "--nnodes")) * int(_flag(args, "--nproc_per_node"))
                 * int(_flag(args, "--samples_per_gpu")) * int(_flag(args, "--grad_accum")))
        assert batch == paper("global_batch", dataset), (n, g, args)
        assert int(_flag(args, "--nnodes")) == n and int(_flag(args, "--nproc_per_node")) == g
        assert f"train_final_{dataset}.py" in args and _flag(args, "--resume") == "auto"
        assert _flag(args, "--work_dir") == f"work_dirs/slurm_{dataset}"       # fixed: a requeue finds it
        assert _flag(args, "--rdzv-endpoint") == f"127.0.0.1:{fake_slurm(n, g)['MASTER_PORT']}"
        assert args[-2:] == ["--data_folder", "X"]                              # the user's flags come last
        assert int(_flag(args, "--num_workers")) == max(1, 16 // g)            # the task's CPUs per GPU
    # the header's own allocation needs no accumulation
    res = subprocess.run(["bash", SBATCH[dataset]], cwd=REPO, capture_output=True, text=True,
                         env=fake_slurm(nodes, gpus, dry=True), timeout=60)
    assert _flag(_launch_args(fake_slurm), "--grad_accum") == "1" and res.returncode == 0


def _wait_for(path, text, proc, timeout=600):
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and text in path.read_text():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def test_voc_launch_trains_stops_before_the_time_limit_requeues_and_continues(voc_copy, tmp_path, fake_slurm):
    wd = tmp_path / "run"
    flags = ["--data_folder", str(voc_copy), *TINY, "--max_iters", "12", "--cam_iters", "2", "--gmm_iters",
             "4", "--log_iters", "1", "--eval_iters", "12"]
    env = fake_slurm(1, 2, WORK_DIR=wd)
    job = subprocess.Popen(["bash", SBATCH["voc"], *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    assert _wait_for(wd / "train.log", "Iter: 3;", job), job.communicate()[0][-3000:]
    job.send_signal(signal.SIGUSR1)                  # what --signal=B:USR1@600 sends to the batch script
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    assert (fake_slurm.folder / "requeue").read_text().split() == ["requeue", "4242"], out[-3000:]
    log = (wd / "train.log").read_text()
    assert "Total gpus: 2, samples per gpu: 2, gradient accumulation: 1, global batch: 4" in log
    step = read_checkpoint(str(wd / "checkpoint.pth"))["step"]
    assert 3 <= step < 12 and f"Stopped by SIGTERM after iteration {step};" in log

    # the requeued job: the same file, the same command line
    (fake_slurm.folder / "step.pids").unlink()
    res = subprocess.run(["bash", SBATCH["voc"], *flags], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (wd / "train.log").read_text()
    assert "Resumed from" in log and "Iter: 12;" in log and "Training finished" in log
    assert read_checkpoint(str(wd / "checkpoint.pth"))["step"] == 12
    assert (fake_slurm.folder / "requeue").read_text().count("requeue") == 1


def test_coco_launch_keeps_the_batch_of_8_on_two_processes(coco_copy, tmp_path, fake_slurm):
    wd = tmp_path / "coco"
    flags = ["--img_folder", str(coco_copy / "JPEGImages"), *TINY, "--max_iters", "2", "--cam_iters", "1",
             "--gmm_iters", "2", "--log_iters", "1", "--eval_iters", "2", "--val_set", "val"]
    res = subprocess.run(["bash", SBATCH["coco"], *flags], cwd=REPO, env=fake_slurm(1, 2, WORK_DIR=wd),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "global batch: 1 x 2 x 1 x 4 = 8" in res.stdout
    log = (wd / "train.log").read_text()
    assert "Total gpus: 2, samples per gpu: 1, gradient accumulation: 4, global batch: 8" in log
    assert "differs from the paper" not in log and "Training finished" in log


@pytest.mark.parametrize("dataset", ["voc", "coco"])
@pytest.mark.parametrize("flags, named", [
    (["--resume", "old/checkpoint.pth"], "--resume"), (["--resume=old.pth"], "--resume"), (["--resu", "x"], "--resu"),
    (["--work_dir", "elsewhere"], "--work_dir"), (["--work=elsewhere"], "--work"),
    (["--samples_per_gpu", "4"], "--samples_per_gpu"), (["--spg", "4"], "--spg"), (["--samp=4"], "--samp"),
    (["--grad_accum", "2"], "--grad_accum"), (["--grad_a=2"], "--grad_a")])
def test_flags_the_recipe_sets_are_refused_before_any_step(dataset, flags, named, fake_slurm):
    res = subprocess.run(["bash", SBATCH[dataset], "--data_folder", "X", *flags], cwd=REPO, capture_output=True,
                         text=True, env=fake_slurm(1, 2, dry=True), timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named} is set by this sbatch file"), lines
    assert ("WORK_DIR" in lines[0]) == (named in ("--resume", "--resu", "--work_dir", "--work"))
    assert not (fake_slurm.folder / "srun.args").exists()                    # nothing was launched


def test_flags_that_only_look_alike_are_passed_on(fake_slurm):
    res = subprocess.run(["bash", SBATCH["voc"], "--data_folder", "X", "--grad_checkpointing", "--num_workers", "3",
                          "--seed", "5"], cwd=REPO, capture_output=True, text=True,
                         env=fake_slurm(1, 2, dry=True), timeout=60)
    assert res.returncode == 0, res.stderr
    assert _launch_args(fake_slurm)[-5:] == ["--grad_checkpointing", "--num_workers", "3", "--seed", "5"]


def test_a_failed_requeue_ends_the_job_with_an_error(fake_slurm):
    env = fake_slurm(1, 2, FAKE_SLURM_SLEEP=60, FAKE_SLURM_REQUEUE_FAILS=1)
    job = subprocess.Popen(["bash", SBATCH["voc"], "--data_folder", "X"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    end = time.time() + 30
    while not (fake_slurm.folder / "step.pids").exists() and time.time() < end:
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 1, (out, err)
    assert "error: scontrol requeue 4242 failed" in err and not (fake_slurm.folder / "requeue").exists()
