"""A downloaded run folder (a checkpoint with its train.log, args.json and evaluation outputs) used
as it comes: every file a run or an evaluation writes is created without following a link that is
already there, outputs never go into a folder the run did not make or was not given, and a
refusal is one line (docs/data.md#untrusted-files).

The attacker plants symbolic links where the project will write (train.log, args.json, tb/,
eval_val/, prediction/, logits/<id>.npz, results.json's old temporary names) pointing at the
user's own files; the tests check the user's files keep their bytes.
"""
import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import eval_cam_voc
import eval_seg_voc
import infer
import train_final_voc
from datasets.lists import read_list
from model.network import DualStudentNet
from model.schedule import paper_config
from engine.run_state import checkpoint_payload
from engine.optim import PolyWarmupAdamW

TINY = "depth=2,embed_dim=64,num_heads=2"
VICTIM_TEXT = "the user's own file\n"


@pytest.fixture
def refusal(capsys):
    """``refusal(entry, argv)``: exit code 2, no traceback, and one ``error:`` line as the last line
    of stderr (a progress bar may come before it); returns that line."""
    def run(entry, argv):
        with pytest.raises(SystemExit) as exc:
            entry(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: "), err
        assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
        return lines[-1]
    return run


@pytest.fixture
def victim(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for name in ("victim.txt", "victim2.txt"):
        (home / name).write_text(VICTIM_TEXT)
    (home / "victim_dir").mkdir()
    return home


def _val_ids(voc):
    return read_list(str(voc / "ImageSets" / "Segmentation" / "val.txt"))


def _untouched(home) -> bool:
    return all((home / n).read_text() == VICTIM_TEXT for n in ("victim.txt", "victim2.txt")) and \
        os.listdir(home / "victim_dir") == []


def _download(tmp_path, junk: bool = False):
    """A downloaded run folder ``DL`` holding a checkpoint of a tiny random DeiT (or junk bytes)."""
    folder = tmp_path / "DL"
    folder.mkdir()
    path = folder / "checkpoint.pth"
    if junk:
        path.write_bytes(np.random.default_rng(0).bytes(300))
        return folder
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21, backbone_args=TINY)
    opt = PolyWarmupAdamW(net.param_groups(1e-4), lr=1e-4, max_iters=4)
    args = argparse.Namespace(backbone="deit_tiny_patch16_224", backbone_args=TINY, num_classes=21,
                              aux_layer=net.aux_layer, seed=0)
    torch.save(checkpoint_payload(net, opt, 1, args, paper_config("voc", max_iters=4, cam_iters=1, gmm_iters=2), 0.0), path)
    return folder


def _train_argv(voc, resume, *extra):
    return ["--data_folder", str(voc), "--resume", str(resume), "--cpu", "--no-pretrained",
            "--backbone", "deit_tiny_patch16_224", "--backbone_args", TINY, "--crop_size", "64",
            "--samples_per_gpu", "2", "--max_iters", "3", "--cam_iters", "1", "--gmm_iters", "2",
            "--warmup_iters", "1", "--log_iters", "1", "--eval_iters", "3", "--num_workers", "0", *extra]


def _eval_argv(voc, model, *extra):
    return ["--data_folder", str(voc), "--model_path", str(model), "--cpu", "--num_workers", "0",
            "--scales", "1.0", "--no-crf", *extra]


# ---------------------------------------------------------------- training: --resume DL/checkpoint.pth
@pytest.mark.parametrize("junk", [True, False])
def test_resuming_a_downloaded_folder_never_writes_through_planted_links(voc_copy, tmp_path, victim,
                                                                         refusal, junk):
    folder = _download(tmp_path, junk)
    (folder / "train.log").symlink_to(victim / "victim.txt")
    (folder / "args.json").symlink_to(victim / "victim2.txt")
    before = sorted(os.listdir(folder))
    err = refusal(train_final_voc.run, _train_argv(voc_copy, folder / "checkpoint.pth"))
    assert ("checkpoint" in err) if junk else ("train.log" in err and "symbolic link" in err), err
    assert _untouched(victim)
    assert sorted(os.listdir(folder)) == before          # nothing was written before refusing



@pytest.mark.parametrize("key,value,kind", [("backbone", ["deit", "tiny"], "a list, not a name"),
                                            ("aux_layer", "9", "a str, not a number"),
                                            ("input_mean", [0.5, 0.5], "a list, not three numbers")])
def test_a_crafted_saved_setting_is_refused_in_one_line_by_resume_as_by_evaluation(voc_copy, tmp_path, refusal,
                                                                                    key, value, kind):
    """A downloaded checkpoint whose saved settings are not of their kind (the backbone a short
    list, ...) is refused by --resume with the line evaluation prints for it."""
    folder = _download(tmp_path)
    ckpt = torch.load(folder / "checkpoint.pth", weights_only=True)
    ckpt["args"][key] = value
    torch.save(ckpt, folder / "checkpoint.pth")
    resumed = refusal(train_final_voc.run, _train_argv(voc_copy, folder / "checkpoint.pth"))
    evaluated = refusal(eval_seg_voc.run, _eval_argv(voc_copy, folder / "checkpoint.pth", "--work_dir",
                                                     str(tmp_path / "ev")))
    assert f"refused checkpoint {folder / 'checkpoint.pth'}: its saved {key} is {kind}" in resumed
    assert resumed == evaluated

def test_a_planted_tensorboard_folder_is_not_written_through(voc_copy, tmp_path, victim):
    folder = _download(tmp_path)
    (folder / "tb").symlink_to(victim / "victim_dir", target_is_directory=True)
    with pytest.raises(SystemExit) as exc:
        train_final_voc.run(_train_argv(voc_copy, folder / "checkpoint.pth"))
    assert exc.value.code == 2
    assert _untouched(victim)


def test_a_resumed_run_writes_its_files_and_tensorboard_into_a_folder_of_its_own(voc_copy, tmp_path):
    folder = _download(tmp_path)
    stale = folder / "tb"
    stale.mkdir()
    (stale / "events.out.tfevents.planted").write_bytes(b"old run")
    train_final_voc.run(_train_argv(voc_copy, folder / "checkpoint.pth"))
    runs = [d for d in os.listdir(stale) if (stale / d).is_dir()]
    assert len(runs) == 1 and os.listdir(stale / runs[0])            # this launch's own events
    assert (stale / "events.out.tfevents.planted").read_bytes() == b"old run"
    assert not (folder / "train.log").is_symlink() and "Resumed from" in (folder / "train.log").read_text()


def _read_only(path):
    """Make ``path`` read-only for this user, also for root (an immutable folder), or skip."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("no way to make a folder read-only for root here")
        return lambda: subprocess.run(["chattr", "-i", str(path)])
    os.chmod(path, 0o555)
    return lambda: os.chmod(path, 0o755)


def test_a_read_only_resume_folder_is_one_line(voc_copy, tmp_path, refusal):
    folder = _download(tmp_path)
    undo = _read_only(folder)
    try:
        err = refusal(train_final_voc.run, _train_argv(voc_copy, folder / "checkpoint.pth"))
    finally:
        undo()
    assert "read-only" in err and str(folder) in err, err


def test_a_read_only_work_dir_is_one_line_for_the_evaluation(voc_copy, tmp_path, refusal):
    folder = _download(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    undo = _read_only(work)
    try:
        err = refusal(eval_seg_voc.run, _eval_argv(voc_copy, folder / "checkpoint.pth",
                                                          "--work_dir", str(work)))
    finally:
        undo()
    assert "read-only" in err and str(work) in err, err


# ---------------------------------------------------------------- evaluation next to a downloaded checkpoint
def test_evaluating_a_downloaded_checkpoint_writes_into_a_new_folder(voc_copy, tmp_path, victim):
    folder = _download(tmp_path)
    (folder / "eval_val").symlink_to(victim / "victim_dir", target_is_directory=True)
    eval_seg_voc.run(_eval_argv(voc_copy, folder / "checkpoint.pth"))
    assert _untouched(victim)
    ids = read_list(str(voc_copy) + "_lists/val.txt")      # derived by the evaluation
    assert sorted(os.listdir(folder / "eval_val_2" / "prediction")) == sorted(i + ".png" for i in ids)
    # a second evaluation keeps the first one's outputs and makes eval_val_3
    first = (folder / "eval_val_2" / "results.json").read_bytes()
    eval_seg_voc.run(_eval_argv(voc_copy, folder / "checkpoint.pth"))
    assert (folder / "eval_val_2" / "results.json").read_bytes() == first
    assert (folder / "eval_val_3" / "results.json").is_file()
    eval_cam_voc.run(["--data_folder", str(voc_copy), "--model_path", str(folder / "checkpoint.pth"), "--cpu",
                      "--num_workers", "0", "--infer_set", "val", "--size", "64", "--save_labels"])
    assert (folder / "cam_val" / "results.json").is_file()


@pytest.mark.parametrize("planted", ["prediction", "logits", "crf_color"])
def test_an_output_sub_folder_that_is_a_link_is_refused(voc_copy, tmp_path, victim, refusal, planted):
    folder = _download(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / planted).symlink_to(victim / "victim_dir", target_is_directory=True)
    err = refusal(eval_seg_voc.run, _eval_argv(voc_copy, folder / "checkpoint.pth", "--work_dir", str(work)))
    assert planted in err and "symbolic link" in err, err
    assert _untouched(victim)


@pytest.mark.parametrize("planted", ["prediction/{id}.png", "logits/{id}.npz", "prediction_color/{id}.png",
                                     "results.json"])
def test_a_planted_file_link_in_a_given_work_dir_is_refused(voc_copy, tmp_path, victim, refusal, planted):
    folder = _download(tmp_path)
    work = tmp_path / "work"
    target = work / planted.format(id=_val_ids(voc_copy)[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(victim / "victim.txt")
    err = refusal(eval_seg_voc.run, _eval_argv(voc_copy, folder / "checkpoint.pth", "--work_dir", str(work)))
    assert "symbolic link" in err, err
    assert _untouched(victim)


def test_links_at_the_old_temporary_names_are_never_opened(voc_copy, tmp_path, victim):
    folder = _download(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for pid in range(os.getpid(), os.getpid() + 20):
        for name in ("results.json", "results.txt"):
            (work / f"{name}.tmp.{pid}").symlink_to(victim / "victim.txt")
    eval_seg_voc.run(_eval_argv(voc_copy, folder / "checkpoint.pth", "--work_dir", str(work)))
    assert (work / "results.json").is_file() and not (work / "results.json").is_symlink()
    assert _untouched(victim)


def test_a_given_work_dir_that_is_a_link_is_the_users_choice(voc_copy, tmp_path):
    folder = _download(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    eval_seg_voc.run(_eval_argv(voc_copy, folder / "checkpoint.pth", "--work_dir", str(tmp_path / "link")))
    assert (real / "results.json").is_file()


def test_infer_refuses_a_planted_output_link(tmp_path, victim, refusal):
    folder = _download(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(photos / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_color.png").symlink_to(victim / "victim.txt")
    err = refusal(infer.main, ["--model_path", str(folder / "checkpoint.pth"), "--input",
                                      str(photos), "--out", str(out), "--cpu", "--no-crf"])
    assert "symbolic link" in err and "a_color.png" in err, err
    assert _untouched(victim)


# ---------------------------------------------------------------- data errors inside loader workers
def test_a_mask_of_another_size_is_one_line_with_loader_workers(voc_copy, tmp_path, refusal):
    folder = _download(tmp_path)
    img_id = _val_ids(voc_copy)[0]
    mask = voc_copy / "SegmentationClassAug" / f"{img_id}.png"
    Image.fromarray(np.zeros((7, 9), np.uint8), mode="L").save(mask)
    argv = _eval_argv(voc_copy, folder / "checkpoint.pth", "--work_dir", str(tmp_path / "w"))
    argv[argv.index("--num_workers") + 1] = "2"
    err = refusal(eval_seg_voc.run, argv)
    assert img_id in err and "does not belong" in err, err


def test_an_image_smaller_than_a_patch_is_evaluated(voc_copy, tmp_path):
    folder = _download(tmp_path)
    img_id = _val_ids(voc_copy)[0]
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(voc_copy / "JPEGImages" / f"{img_id}.jpg")
    Image.fromarray(np.ones((1, 1), np.uint8), mode="L").save(voc_copy / "SegmentationClassAug" / f"{img_id}.png")
    res = eval_seg_voc.run(_eval_argv(voc_copy, folder / "checkpoint.pth", "--work_dir", str(tmp_path / "w"),
                                      "--scales", "1.0,0.5"))
    assert np.array(Image.open(tmp_path / "w" / "prediction" / f"{img_id}.png")).shape == (1, 1)
    assert "Seg_1" in res
