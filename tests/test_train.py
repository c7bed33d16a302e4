"""The training engine: all phases on VOC and COCO data, DDP, resume, checkpoints, errors."""
import json
import re
import os
import subprocess
import sys

import pytest
import torch

import train_final_coco
import train_final_voc
from utils import checkpoint
from utils.checkpoint import read_checkpoint
from model.network import DualStudentNet
from model.schedule import paper_config
from engine import train_args, train_step
from engine.validation import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "deit_tiny_patch16_224", "--no-pretrained", "--crop_size", "48",
        "--samples_per_gpu", "2", "--num_workers", "0", "--no-tensorboard", "--warmup_iters", "2",
        "--lr", "1e-4", "--cam_scales", "1.0 0.5", "--cpu"]


def _voc_args(voc_copy, work_dir, *extra):
    return ["--data_folder", str(voc_copy), "--work_dir", str(work_dir), *TINY, *extra]


def test_voc_script_runs_all_three_phases_and_writes_log_and_checkpoint(voc_copy, tmp_path):
    wd = tmp_path / "run"
    result = train_final_voc.run(_voc_args(voc_copy, wd, "--max_iters", "6", "--cam_iters", "2",
                                           "--gmm_iters", "4", "--log_iters", "1", "--eval_iters", "6"))
    log = (wd / "train.log").read_text()
    for n in range(1, 7):
        assert f"Iter: {n};" in log
    # phase A has no seg loss, phases B and C do
    assert "Iter: 2;" in log and "seg_loss: 0.0000" in log.split("Iter: 3;")[0]
    assert "seg_loss: 0.0000" not in log.split("Iter: 4;")[1]
    # every term of the loss, the original's fields first and in its order, then the consistency loss
    fields = re.findall(r"Iter: (\d+);.* cls_loss: [\d.]+ \| ptc_loss: [\d.]+ \| seg_loss: [\d.]+ \| "
                        r"sim_loss: [\d.]+ \| reg_loss: ([\d.]+)$", log, re.M)
    assert [int(n) for n, _ in fields] == list(range(1, 7))
    assert all(float(reg) == 0 for n, reg in fields if int(n) <= 5)
    assert "val cls score of branch #2" in log and "Seg_2" in log
    ckpt = read_checkpoint(str(wd / "checkpoint.pth"))
    assert ckpt["step"] == 6 and not any(k.startswith("module.") for k in ckpt["model"])
    assert set(result["scores"]) == {"CAM_1", "aux_CAM_1", "Seg_1", "CAM_2", "aux_CAM_2", "Seg_2"}
    assert json.loads((wd / "args.json").read_text())["max_iters"] == 6


def test_coco_script_runs_all_phases_with_its_own_defaults(coco_copy, tmp_path):
    wd = tmp_path / "coco"
    args = ["--img_folder", str(coco_copy / "JPEGImages"), "--work_dir", str(wd), *TINY,
            "--max_iters", "8", "--cam_iters", "2", "--gmm_iters", "6", "--log_iters", "2",
            "--eval_iters", "8", "--val_set", "val"]
    result = train_final_coco.run(args)
    log = (wd / "train.log").read_text()
    assert "Iter: 8;" in log and result["num_images"] > 0
    assert read_checkpoint(str(wd / "checkpoint.pth"))["model"]["branch1.decoder.conv8.weight"].shape[0] == 81
    assert "global batch 2 differs from the paper's 8" in log


def test_phase_weights_follow_the_paper():
    voc = paper_config("voc")
    assert voc.weights(2000)["seg"] == 0 and voc.weights(2001)["seg"] == 0.2
    assert voc.weights(8000)["reg"] == 0 and voc.weights(8001)["reg"] == 0.05
    assert voc.phase(1999) == "A" and voc.phase(2000) == "B" and voc.phase(8000) == "C"
    assert voc.weights(0)["ptc"] == 0.2 and voc.weights(0)["dis"] == 0.1
    coco = paper_config("coco")
    w = coco.weights(8000)
    assert w["seg"] == w["dis"] == w["ptc"] == 0
    w = coco.weights(8001)
    assert w["seg"] == 0.2 and w["dis"] == 0.05 and w["ptc"] == 0
    assert coco.weights(12001)["ptc"] == 0.2 and coco.weights(32000)["reg"] == 0.05
    th = coco.class_thresholds(46000)
    assert th.shape == (80,) and torch.allclose(th, torch.full((80,), 0.6), atol=1e-4)
    th = voc.class_thresholds(8000)
    assert th[0] == pytest.approx(0.70) and th[4] == pytest.approx(0.6625, abs=1e-4)


def test_resumed_run_reaches_the_same_step_lr_and_thresholds(voc_copy, tmp_path, monkeypatch):
    common = ["--max_iters", "4", "--cam_iters", "1", "--gmm_iters", "3", "--log_iters", "2",
              "--eval_iters", "2"]
    train_final_voc.run(_voc_args(voc_copy, tmp_path / "full", *common))
    real = train_step.dupl_step

    def crash_at_three(*args, **kwargs):
        if args[2] == 2:
            raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_step, "dupl_step", crash_at_three)
    with pytest.raises(KeyboardInterrupt):
        train_final_voc.run(_voc_args(voc_copy, tmp_path / "crashed", *common))
    monkeypatch.undo()
    saved = str(tmp_path / "crashed" / "checkpoint.pth")
    assert read_checkpoint(saved)["step"] == 2
    train_final_voc.run(_voc_args(voc_copy, tmp_path / "resumed", *common, "--resume", saved))
    full = read_checkpoint(str(tmp_path / "full" / "checkpoint.pth"))
    resumed = read_checkpoint(str(tmp_path / "resumed" / "checkpoint.pth"))
    assert full["step"] == resumed["step"] == 4
    assert full["optimizer"]["global_step"] == resumed["optimizer"]["global_step"] == 4
    assert [g["lr"] for g in full["optimizer"]["param_groups"]] == \
        [g["lr"] for g in resumed["optimizer"]["param_groups"]]
    cfg = train_args.config_from_args(train_args.get_args_parser("voc").parse_args(common), "voc")
    assert torch.equal(cfg.class_thresholds(full["step"]), cfg.class_thresholds(resumed["step"]))
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "Resumed from" in log and "Iter: 4;" in log and "Iter: 2;" not in log


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    checkpoint.save_checkpoint(path, {"step": 1})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")   # the open temporary file the checkpoint module hands over
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(voc_copy, tmp_path, monkeypatch, capsys):
    wd = tmp_path / "nan"
    real = train_step.dupl_step

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        if args[2] >= 2:
            out.terms["cls"] = out.terms["cls"] * float("nan")
        return out

    monkeypatch.setattr(train_step, "dupl_step", poisoned)
    with pytest.raises(SystemExit) as exc:
        train_final_voc.run(_voc_args(voc_copy, wd, "--max_iters", "4", "--cam_iters", "1",
                                      "--gmm_iters", "4", "--log_iters", "2", "--eval_iters", "2"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: loss became non-finite") and "iteration 4" in err and "checkpoint.pth" in err
    assert read_checkpoint(str(wd / "checkpoint.pth"))["step"] == 2


@pytest.mark.parametrize("extra,message", [
    (["--crop_size", "30"], "--crop_size 30 at scale 0.5 (--cam_scales / --aug_scale) gives 15-pixel images"),
    (["--cam_iters", "9", "--gmm_iters", "4"], "--cam_iters (9) <= --gmm_iters (4)"),
    (["--samples_per_gpu", "0"], "--samples_per_gpu must be positive"),
    (["--resume", "nowhere.pth"], "--resume nowhere.pth does not exist"),
    (["--backbone", "resnet50"], "not a ViT-family encoder"),
])
def test_bad_flags_give_one_line_errors(voc_copy, tmp_path, one_line_error, extra, message):
    err = one_line_error(train_final_voc.run, _voc_args(voc_copy, tmp_path / "bad", "--max_iters", "4",
                                                        "--cam_iters", "1", "--gmm_iters", "2", *extra))
    assert message in err


def test_bad_data_gives_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_final_voc.run(["--data_folder", str(tmp_path / "none"), "--no-pretrained", "--cpu",
                             "--work_dir", str(tmp_path / "w")])
    assert "--data_folder" in capsys.readouterr().err
    res = subprocess.run([sys.executable, "train_final_coco.py", "--img_folder", str(tmp_path),
                          "--no-pretrained", "--cpu", "--work_dir", str(tmp_path / "w")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "not a COCO 2014 image folder" in res.stderr


def test_resume_from_another_backbone_is_refused(voc_copy, tmp_path, capsys):
    torch.manual_seed(0)
    small = DualStudentNet("deit_small_patch16_224", 21)
    torch.save({"model": small.state_dict(), "optimizer": {}, "step": 1}, tmp_path / "small.pth")
    with pytest.raises(SystemExit):
        train_final_voc.run(_voc_args(voc_copy, tmp_path / "w", "--max_iters", "2", "--cam_iters",
                                      "1", "--gmm_iters", "2", "--resume", str(tmp_path / "small.pth")))
    assert "holds a ViT-small/16" in capsys.readouterr().err


def test_help_lists_the_original_flags():
    text = train_args.get_args_parser("voc").format_help()
    for flag in ("--data_folder", "--list_folder", "--backbone", "--pretrained", "--crop_size",
                 "--samples_per_gpu", "--max_iters", "--cam_iters", "--gmm_iters", "--eval_iters",
                 "--log_iters", "--lr", "--warmup_iters", "--w_ptc", "--w_seg", "--high_thre",
                 "--low_thre", "--bkg_thre", "--gamma", "--gmm_valid_thre", "--work_dir", "--seed",
                 "--num_workers", "--amp", "--grad_accum", "--resume", "--no-pretrained"):
        assert flag in text, flag
    coco = train_args.get_args_parser("coco")
    assert coco.parse_args(["--data_folder", "x"]).img_folder == "x"
    assert coco.parse_args([]).samples_per_gpu == 1 and coco.parse_args([]).aux_layer is None


def test_two_process_ddp_keeps_ranks_identical_and_validation_equals_one_process(voc_copy, tmp_path,
                                                                                  one_torch_thread):
    # the ranks run with one thread each; the one-process reference does too, so the comparison is
    # about sharding and reduction, not about a thread count changing float summation order
    lists = tmp_path / "lists"
    out = tmp_path / "ddp.json"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    for step in (0, 5):   # phase A, then phase C (GMM + consistency branch through DDP)
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                              "--master_port", str(29600 + os.getpid() % 300 + step),
                              os.path.join(REPO, "tests", "helpers", "ddp_check.py"), str(voc_copy),
                              str(lists), str(out), str(step)],
                             cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(out.read_text())
        assert got["identical"]
        # phase A (step 0): the decoders take no part in the loss and stay as initialised,
        # without optimiser state; phase C (step 5): they are trained
        assert got["decoders_untouched"] == (step == 0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    net.load_state_dict(torch.load(str(out) + ".pth"))
    from datasets.layout import voc_layout
    from datasets.segmentation import EvalDataset
    single = validate(net, EvalDataset(voc_layout(str(voc_copy)), str(lists), "val"),
                      torch.device("cpu"), crop_size=48, num_workers=0)
    assert got["num_images"] == single["num_images"]
    for k, v in single["scores"].items():
        assert got["miou"][k] == pytest.approx(v["miou"], abs=1e-12)
    assert got["f1"] == pytest.approx(single["f1"], abs=1e-12)


def test_decoders_are_untouched_by_the_optimiser_until_the_segmentation_loss_starts(voc_copy, tmp_path):
    def run(max_iters, name):
        wd = tmp_path / name
        train_final_voc.run(_voc_args(voc_copy, wd, "--max_iters", str(max_iters), "--cam_iters", "2",
                                      "--gmm_iters", "3", "--log_iters", "1", "--eval_iters", str(max_iters)))
        return read_checkpoint(str(wd / "checkpoint.pth"))

    torch.manual_seed(0)
    initial = DualStudentNet("deit_tiny_patch16_224", 21, pretrained=False).state_dict()
    decoder_keys = [k for k in initial if ".decoder." in k]
    # iterations 0, 1, 2 (= cam_iters): segmentation weight 0, the decoders take no part
    ckpt = run(3, "until_cam_iters")
    for k in decoder_keys:
        assert torch.equal(ckpt["model"][k], initial[k]), k
    decoder_ids = ckpt["optimizer"]["param_groups"][3]["params"]
    assert decoder_ids and not set(decoder_ids) & set(ckpt["optimizer"]["state"])
    # the other groups were stepped
    assert set(ckpt["optimizer"]["param_groups"][2]["params"]) <= set(ckpt["optimizer"]["state"])
    # one iteration later the segmentation loss trains them
    ckpt = run(4, "after_cam_iters")
    assert all(not torch.equal(ckpt["model"][k], initial[k]) for k in decoder_keys)
    assert set(decoder_ids) <= set(ckpt["optimizer"]["state"])
    assert all(int(ckpt["optimizer"]["state"][i]["step"]) == 1 for i in decoder_ids)


def _tensors(tree, path=""):
    """``{path: tensor}`` of every tensor in a nested dict / list."""
    if torch.is_tensor(tree):
        return {path: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{path}/{key}").items()}


def test_tensorboard_images_leave_the_training_unchanged(voc_copy, tmp_path):
    # the images show what the step itself does not need (final-layer CAMs in phase A, pseudo
    # labels at n == cam_iters); computing them must not change a single weight or moment
    ckpts = {}
    for name, flag in (("plain", "--no-tensorboard"), ("images", "--tensorboard")):
        train_final_voc.run(_voc_args(voc_copy, tmp_path / name, "--max_iters", "5", "--cam_iters", "2",
                                      "--gmm_iters", "4", "--log_iters", "1", "--eval_iters", "5", flag))
        ckpts[name] = read_checkpoint(str(tmp_path / name / "checkpoint.pth"))
    assert (tmp_path / "images" / "tb").is_dir() and not (tmp_path / "plain" / "tb").exists()
    for part in ("model", "optimizer"):
        plain, images = _tensors(ckpts["plain"][part]), _tensors(ckpts["images"][part])
        assert plain.keys() == images.keys() and len(plain) > 100
        assert [k for k in plain if not torch.equal(plain[k], images[k])] == []
