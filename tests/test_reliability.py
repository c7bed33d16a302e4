"""Reliability: users' files stay untouched, runs resume where they left off, preemption and dead
ranks are survived, and every bad value is a one-line error."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import eval_cam_voc
import eval_seg_coco_ddp
import eval_seg_voc
import infer
import train_final_voc
import visualize_cams
from datasets.layout import voc_layout
from datasets.lists import ensure_lists, read_list
from utils.checkpoint import read_checkpoint
from model.network import DualStudentNet
from engine import train_args
from engine.evaluation import usable_cores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "deit_tiny_patch16_224", "--no-pretrained", "--crop_size", "48",
        "--samples_per_gpu", "2", "--num_workers", "0", "--no-tensorboard", "--warmup_iters", "2",
        "--lr", "1e-4", "--cam_scales", "1.0", "--cpu"]


def _train_args(voc, wd, *extra):
    return ["--data_folder", str(voc), "--work_dir", str(wd), *TINY, *extra]


def _snapshot(folder):
    return {p: open(os.path.join(folder, p), "rb").read() for p in sorted(os.listdir(folder))}


@pytest.fixture
def lists(voc_copy):
    """The user's list folder: derived once, then treated as theirs."""
    folder = ensure_lists(voc_layout(str(voc_copy)), None, ["train_aug", "val", "train"])
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "voc.pth"
    torch.manual_seed(0)
    torch.save({"model": DualStudentNet("deit_tiny_patch16_224", 21).state_dict(), "step": 3,
                "args": {"backbone": "deit_tiny_patch16_224", "num_classes": 21, "aux_layer": -3}}, path)
    return path


# ------------------------------------------------------------------ 1. the user's files
def test_a_typo_in_a_split_writes_nothing_and_names_the_splits(voc_copy, lists, ckpt, tmp_path, one_line_error):
    before = _snapshot(lists)
    model = ["--model_path", str(ckpt), "--cpu", "--num_workers", "0"]
    msgs = [
        one_line_error(eval_seg_voc.run, ["--data_folder", str(voc_copy), "--infer_set", "vall", *model]),
        one_line_error(eval_cam_voc.run, ["--data_folder", str(voc_copy), "--infer_set", "vall", *model]),
        one_line_error(visualize_cams.main, ["--data_folder", str(voc_copy), "--split", "vall",
                                             "--out", str(tmp_path / "vis"), *model[:3]]),
        one_line_error(train_final_voc.run, _train_args(voc_copy, tmp_path / "run", "--val_set", "vall")),
    ]
    for msg in msgs:
        assert "'vall' does not exist" in msg and "train_aug" in msg and "val" in msg, msg
    assert _snapshot(lists) == before
    assert not (tmp_path / "run").exists()            # a failed launch leaves no run folder
    assert not (tmp_path / "vis").exists()


def test_a_missing_list_is_derived_without_touching_the_users_other_files(voc_copy, lists):
    mine = read_list(os.path.join(lists, "train_aug.txt"))[:5]
    with open(os.path.join(lists, "train_aug.txt"), "w") as f:   # the user's own subset
        f.write("".join(i + "\n" for i in mine))
    os.remove(os.path.join(lists, "val.txt"))
    before = _snapshot(lists)
    ensure_lists(voc_layout(str(voc_copy)), lists, ["train_aug", "val"])
    after = _snapshot(lists)
    assert set(after) == set(before) | {"val.txt"}
    assert all(after[k] == v for k, v in before.items())


def test_the_prepare_command_keeps_existing_lists_unless_overwrite(voc_copy, lists):
    from datasets import prepare
    path = os.path.join(lists, "train.txt")
    with open(path, "w") as f:
        f.write("mine\n")
    prepare.main(["--dataset", "voc", "--data_folder", str(voc_copy)])
    assert open(path).read() == "mine\n"
    prepare.main(["--dataset", "voc", "--data_folder", str(voc_copy), "--overwrite"])
    assert open(path).read() != "mine\n"


# ------------------------------------------------------------------ 2. resume
def test_resume_continues_in_the_checkpoints_run_folder(voc_copy, tmp_path):
    wd = tmp_path / "run"
    train_final_voc.run(_train_args(voc_copy, wd, "--max_iters", "2", "--cam_iters", "1", "--gmm_iters", "2",
                                    "--log_iters", "1", "--eval_iters", "2"))
    args = ["--data_folder", str(voc_copy), *TINY, "--max_iters", "4", "--cam_iters", "1", "--gmm_iters", "2",
            "--log_iters", "1", "--eval_iters", "2", "--resume", str(wd / "checkpoint.pth")]
    train_final_voc.run(args)
    log = (wd / "train.log").read_text()
    assert "Iter: 1;" in log and "Resumed from" in log and "Iter: 4;" in log
    assert read_checkpoint(str(wd / "checkpoint.pth"))["step"] == 4
    assert (wd / "best.pth").is_file() and (wd / "results.json").is_file()
    assert not os.path.exists(os.path.join(REPO, "work_dirs", "voc")) or \
        not any(str(wd) in p for p in os.listdir(os.path.join(REPO, "work_dirs", "voc")))


def test_resume_auto_starts_fresh_then_resumes(voc_copy, tmp_path):
    wd = tmp_path / "auto"
    common = ["--cam_iters", "1", "--gmm_iters", "2", "--log_iters", "1", "--eval_iters", "2", "--resume", "auto"]
    train_final_voc.run(_train_args(voc_copy, wd, "--max_iters", "2", *common))
    assert "Resumed" not in (wd / "train.log").read_text()
    train_final_voc.run(_train_args(voc_copy, wd, "--max_iters", "4", *common))
    assert "Resumed from" in (wd / "train.log").read_text()
    assert read_checkpoint(str(wd / "checkpoint.pth"))["step"] == 4


def test_evaluation_takes_the_model_settings_from_the_checkpoint(voc_copy, ckpt, tmp_path, one_line_error,
                                                                  capsys):
    res = eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(ckpt), "--no-crf", "--cpu",
                            "--num_workers", "0", "--scales", "1.0", "--work_dir", str(tmp_path / "e")])
    assert "Seg_1" in res          # no --backbone: deit_tiny came from the checkpoint
    capsys.readouterr()
    msg = one_line_error(eval_seg_voc.run, ["--data_folder", str(voc_copy), "--model_path", str(ckpt),
                                            "--backbone", "deit_small_patch16_224", "--cpu"])
    assert "--backbone deit_small_patch16_224 contradicts" in msg


# ------------------------------------------------------------------ 3. preemption and faults
def _wait_for(path, text, proc, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and text in open(path).read():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def test_sigterm_writes_a_checkpoint_at_that_iteration_and_resume_auto_finishes(voc_copy, tmp_path):
    wd = tmp_path / "pre"
    cmd = [sys.executable, "train_final_voc.py", *_train_args(voc_copy, wd, "--max_iters", "40", "--cam_iters",
                                                               "2", "--gmm_iters", "4", "--log_iters", "1",
                                                               "--eval_iters", "40", "--resume", "auto")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(wd / "train.log", "Iter: 3;", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    log = (wd / "train.log").read_text()
    assert "Stopped by SIGTERM after iteration" in log
    step = read_checkpoint(str(wd / "checkpoint.pth"))["step"]
    assert 3 <= step < 40 and f"Stopped by SIGTERM after iteration {step};" in log
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    final = read_checkpoint(str(wd / "checkpoint.pth"))
    assert final["step"] == 40 and final["optimizer"]["global_step"] == 40
    args = train_args.get_args_parser("voc").parse_args(["--max_iters", "40", "--cam_iters", "2",
                                                         "--gmm_iters", "4", "--lr", "1e-4",
                                                         "--warmup_iters", "2"])
    from engine.optim import poly_warmup_lr
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        poly_warmup_lr(39, 1e-4, 40, 2, 1e-6, 0.9), rel=1e-9)


def test_a_stop_during_a_long_validation_checkpoints_within_15_s_and_the_relaunch_validates_first(tmp_path):
    """The signal reaches every process of the job, loader workers included (what a cluster's
    scancel does), 5 s into a validation of about 15 s."""
    from datasets import synthetic
    voc = synthetic.write_voc(tmp_path / "data", num_train=8, num_val=45, num_test=0, seed=5)
    wd = tmp_path / "val_stop"
    cmd = [sys.executable, "train_final_voc.py", "--data_folder", str(voc), "--work_dir", str(wd),
           *[a if a != "48" else "224" for a in TINY], "--num_workers", "2", "--max_iters", "4",
           "--eval_iters", "2", "--log_iters", "1", "--cam_iters", "1", "--gmm_iters", "2",
           "--cam_scales", "1.0", "0.5", "1.5", "--resume", "auto"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert _wait_for(wd / "train.log", "Validating...", proc)
    time.sleep(5)
    assert proc.poll() is None and "val cls score" not in (wd / "train.log").read_text()
    os.killpg(proc.pid, signal.SIGTERM)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 15 and proc.returncode == 0, err[-2000:]
    log = (wd / "train.log").read_text()
    assert "Stopped by SIGTERM after iteration 2 during its validation" in log and "val cls score" not in log
    ckpt = read_checkpoint(str(wd / "checkpoint.pth"))
    assert ckpt["step"] == 2 and ckpt["validation_due"] is True and not (wd / "best.pth").exists()

    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (wd / "train.log").read_text().split("Resumed from")[1]
    assert log.index("The validation after iteration 2 was stopped: running it now") < log.index("Iter: 3;")
    assert log.count("val cls score of branch #1") == 2 and "Training finished" in log
    final = read_checkpoint(str(wd / "checkpoint.pth"))
    assert final["step"] == 4 and "validation_due" not in final
    assert read_checkpoint(str(wd / "best.pth"))["step"] in (2, 4)


def test_a_stop_request_ends_an_evaluation_at_once_and_every_finished_file_is_whole(voc_copy, ckpt, tmp_path):
    wd = tmp_path / "eval"
    cmd = [sys.executable, "eval_seg_voc.py", "--data_folder", str(voc_copy), "--model_path", str(ckpt), "--cpu",
           "--num_workers", "2", "--no-crf", "--work_dir", str(wd)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    end = time.time() + 120
    while time.time() < end and proc.poll() is None and not list((wd / "logits").glob("*.npz")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGTERM)
    t0 = time.time()
    proc.communicate(timeout=60)
    assert time.time() - t0 < 15 and proc.returncode != 0
    from engine.inference import load_logits
    done = sorted((wd / "logits").glob("*.npz"))
    assert 1 <= len(done) < 12 and not (wd / "results.json").exists()
    for path in done:                                # written atomically: complete or absent
        assert load_logits(str(path), "1").shape[0] == 21


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def test_a_killed_rank_is_restarted_and_the_run_resumes_to_the_uninterrupted_state(voc_copy, tmp_path):
    ensure_lists(voc_layout(str(voc_copy)), None, ["train_aug", "val"])
    wd = tmp_path / "ft"
    train = _train_args(voc_copy, wd, "--max_iters", "16", "--cam_iters", "2", "--gmm_iters", "4",
                        "--log_iters", "1", "--eval_iters", "4", "--resume", "auto")
    # LOGLEVEL=INFO: torchrun says each time it restarts the workers
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", LOGLEVEL="INFO")
    # two restarts allowed, as a real launch would (the README's SLURM line allows 3), yet the
    # first must rejoin: a restart that reads the previous attempt's keys fails or hangs in gloo
    proc = subprocess.Popen(_torchrun("--nproc_per_node=2", "--max-restarts", "2", "--rdzv-backend", "c10d",
                                      "--rdzv-endpoint", f"127.0.0.1:{29400 + os.getpid() % 90}",
                                      "train_final_voc.py", *train),
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(wd / "train.log", "Iter: 6;", proc, timeout=600)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("will restart worker group") == 1 and "could not join" not in err, err[-3000:]
    log = (wd / "train.log").read_text()
    assert "Resumed from" in log and "Iter: 16;" in log
    final = read_checkpoint(str(wd / "checkpoint.pth"))
    assert final["step"] == 16 and final["optimizer"]["global_step"] == 16
    from engine.optim import poly_warmup_lr
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(poly_warmup_lr(15, 1e-4, 16, 2, 1e-6, 0.9))


def test_two_nodes_train_and_validate_together(voc_copy, tmp_path):
    ensure_lists(voc_layout(str(voc_copy)), None, ["train_aug", "val"])
    wd = tmp_path / "nodes"
    train = _train_args(voc_copy, wd, "--max_iters", "3", "--cam_iters", "1", "--gmm_iters", "2",
                        "--log_iters", "1", "--eval_iters", "3")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    port = str(29300 + os.getpid() % 90)
    procs = [subprocess.Popen(_torchrun("--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                                        "--master_addr", "127.0.0.1", "--master_port", port,
                                        "train_final_voc.py", *train),
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    log = (wd / "train.log").read_text()
    assert "Total gpus: 2" in log and "Validating" in log and "Seg_2" in log


def test_nodes_that_see_different_run_folders_stop_before_training(voc_copy, tmp_path):
    """`--resume auto` on two nodes whose WORK_DIR is not one shared folder: node 0 finds a
    checkpoint, node 1 none; both stop with one line before anything is written."""
    ensure_lists(voc_layout(str(voc_copy)), None, ["train_aug", "val"])
    common = ["--cam_iters", "1", "--gmm_iters", "2", "--log_iters", "1", "--eval_iters", "2", "--resume", "auto"]
    train_final_voc.run(_train_args(voc_copy, tmp_path / "node0", "--max_iters", "2", *common))
    before = _snapshot(tmp_path / "node0")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    port = str(29300 + (os.getpid() + 45) % 90)
    procs = [subprocess.Popen(_torchrun("--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                                        "--master_addr", "127.0.0.1", "--master_port", port, "train_final_voc.py",
                                        *_train_args(voc_copy, tmp_path / f"node{r}", "--max_iters", "4", *common)),
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode != 0
        assert "error: the ranks would start from different states (--resume auto): --work_dir" in err, err[-2000:]
    assert _snapshot(tmp_path / "node0") == before and not (tmp_path / "node1").exists()


def test_a_corrupt_training_image_stops_with_its_name_and_keeps_the_checkpoint(voc_copy, tmp_path, one_line_error,
                                                                               capsys):
    wd = tmp_path / "corrupt"
    common = ["--cam_iters", "1", "--gmm_iters", "2", "--log_iters", "1", "--eval_iters", "2"]
    train_final_voc.run(_train_args(voc_copy, wd, "--max_iters", "2", *common))
    saved = (wd / "checkpoint.pth").read_bytes()
    bad = read_list(str(voc_copy) + "_lists/train_aug.txt")[0]
    (voc_copy / "JPEGImages" / f"{bad}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    for workers in ("0", "1"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            train_final_voc.run(_train_args(voc_copy, wd, "--max_iters", "60", *common, "--resume", "auto")
                                + ["--num_workers", workers])
        assert exc.value.code == 2
        # after the progress bar, the error is one line that names the file
        err = capsys.readouterr().err.rstrip().split("\n")[-1]
        assert err.startswith("error: cannot read image") and bad in err, err
    # the last checkpoint stays (a validation before the bad image may have replaced it atomically)
    assert read_checkpoint(str(wd / "checkpoint.pth"))["step"] >= 2 and saved


def test_infer_skips_a_corrupt_file_and_segments_the_rest(voc_copy, ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = sorted((voc_copy / "JPEGImages").iterdir())[0]
    (folder / "good.jpg").write_bytes(good.read_bytes())
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    infer.main(["--model_path", str(ckpt), "--input", str(folder), "--out", str(tmp_path / "out"), "--cpu",
                "--scales", "1.0"])
    captured = capsys.readouterr()
    assert "warning: skipping" in captured.err and "bad.jpg" in captured.err
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "bad.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_training_without_a_usable_gpu_needs_cpu_on_purpose(voc_copy, tmp_path, one_line_error):
    args = [a for a in _train_args(voc_copy, tmp_path / "nogpu", "--max_iters", "2", "--cam_iters", "1",
                                   "--gmm_iters", "2") if a != "--cpu"]
    msg = one_line_error(train_final_voc.run, args)
    assert "CUDA" in msg and "--cpu" in msg
    assert not (tmp_path / "nogpu").exists()


# ------------------------------------------------------------------ 4. bad values and flags
@pytest.mark.parametrize("extra, expected", [
    (["--scales", "2.0,0.5,3"], "--scales takes 2 values"),
    (["--scales", "2.0,0.5"], "--scales 2,0.5: give the smaller value first"),
    (["--cam_scales", "1.0,0"], "--cam_scales 1,0: every value must be positive"),
    (["--scales", "abc"], "'abc' is not a number"),
    (["--high_thre", "1.5"], "--high_thre 1.5 must be in (0, 1)"),
    (["--low_thre", "0.8"], "--low_thre 0.8 must not exceed --high_thre"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--max_iters", "10", "--cam_iters", "11"], "--cam_iters"),
    (["--resume", "auto", "--work_dir", ""], "--resume auto needs --work_dir"),
])
def test_bad_training_values_are_one_line_errors(voc_copy, tmp_path, one_line_error, extra, expected):
    args = _train_args(voc_copy, tmp_path / "bad") + extra
    msg = one_line_error(train_final_voc.run, args)
    assert expected in msg, msg
    assert not (tmp_path / "bad").exists()


def test_an_empty_phase_b_trains(voc_copy, tmp_path):
    train_final_voc.run(_train_args(voc_copy, tmp_path / "noB", "--max_iters", "4", "--cam_iters", "3",
                                    "--gmm_iters", "3", "--log_iters", "1", "--eval_iters", "4"))
    assert read_checkpoint(str(tmp_path / "noB" / "checkpoint.pth"))["step"] == 4


def test_scales_take_either_form_and_the_launchers_local_rank_is_accepted(voc_copy, ckpt, tmp_path):
    base = ["--data_folder", str(voc_copy), "--model_path", str(ckpt), "--no-crf", "--cpu", "--num_workers", "0"]
    a = eval_seg_voc.run(base + ["--scales", "1.0", "0.5", "--work_dir", str(tmp_path / "a")])
    b = eval_seg_voc.run(base + ["--scales", "1.0,0.5", "--work_dir", str(tmp_path / "b"), "--local-rank", "0"])
    c = eval_seg_voc.run(base + ["--scales", "1.0 0.5", "--work_dir", str(tmp_path / "c"), "--local_rank=0"])
    assert a["Seg_1"]["miou"] == b["Seg_1"]["miou"] == c["Seg_1"]["miou"]
    for parser in (train_args.get_args_parser("voc"), eval_seg_coco_ddp.get_args_parser("coco")):
        assert parser.parse_args(["--local-rank", "1"]).local_rank == 1


def test_crf_workers_follow_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3


def test_visualize_accepts_a_folder_of_images(voc_copy, ckpt, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((voc_copy / "JPEGImages").iterdir())[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    visualize_cams.main(["--model_path", str(ckpt), "--images", str(folder), "--labels", "dog",
                         "--out", str(tmp_path / "vis"), "--cpu", "--size", "48"])
    assert len(os.listdir(tmp_path / "vis")) == 2


def test_offline_pretrained_fails_fast_with_the_one_line_error(voc_copy, tmp_path, monkeypatch, one_line_error):
    from model import backbone
    monkeypatch.setattr(backbone, "_weights_cached", lambda tag: False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")      # nothing listens there
    args = [a for a in _train_args(voc_copy, tmp_path / "pre") if a != "--no-pretrained"] + \
        ["--max_iters", "2", "--cam_iters", "1", "--gmm_iters", "2"]
    start = time.time()
    msg = one_line_error(train_final_voc.run, args)
    assert "cannot get the ImageNet weights" in msg and "--pretrained_path" in msg
    assert time.time() - start < 30


def test_labels_that_disagree_with_the_masks_are_reported_and_left_alone(voc_copy, lists):
    from datasets.lists import LABELS_FILE, load_labels, save_labels
    labels = load_labels(lists)
    first = read_list(os.path.join(lists, "val.txt"))[0]
    labels[first] = 1 - np.asarray(labels[first])
    save_labels(os.path.join(lists, LABELS_FILE), labels)
    before = _snapshot(lists)
    said = []
    ensure_lists(voc_layout(str(voc_copy)), lists, ["val"], log=said.append)
    assert any(LABELS_FILE in m and "disagrees with the masks" in m and first in m for m in said), said
    assert _snapshot(lists) == before
