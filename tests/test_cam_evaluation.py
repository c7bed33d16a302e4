"""CAM and pseudo-label evaluation (engine/cam_evaluation.py, eval_cam_voc.py, eval_cam_coco.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval_cam_coco
import eval_cam_voc
from datasets.layout import voc_layout
from datasets.lists import ensure_lists
from datasets.segmentation import EvalDataset
from model.network import DualStudentNet
from engine.cam_evaluation import best_present_class, default_batch_size
from engine.validation import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "deit_tiny_patch16_224", "--num_workers", "0", "--cpu", "--size", "48",
        "--cam_scales", "1.0,0.5"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "voc.pth"
    torch.manual_seed(1)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    torch.save({"model": net.state_dict(), "step": 7}, path)
    return path


def test_cam_miou_equals_the_training_validation_on_the_same_images(voc_copy, checkpoint, tmp_path):
    res = eval_cam_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoint), "--infer_set",
                            "val", "--work_dir", str(tmp_path / "cams"), *TINY])
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    net.load_state_dict(torch.load(checkpoint)["model"])
    layout = voc_layout(str(voc_copy))
    lists = ensure_lists(layout, None, ["val"])
    ref = validate(net, EvalDataset(layout, lists, "val"), torch.device("cpu"), crop_size=48,
                   bkg_thre=0.5, cam_scales=(1.0, 0.5), num_workers=0)
    for col in ("CAM_1", "aux_CAM_1", "CAM_2", "aux_CAM_2"):
        assert res["scores"][col]["miou"] == pytest.approx(ref["scores"][col]["miou"], abs=1e-9), col
        np.testing.assert_allclose(res["scores"][col]["iou"], ref["scores"][col]["iou"], atol=1e-9)


def test_threshold_sweep_reports_the_best_threshold_and_results_json(voc_copy, checkpoint, tmp_path, capsys):
    wd = tmp_path / "sweep"
    capsys.readouterr()
    res = eval_cam_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoint), "--infer_set",
                            "train", "--work_dir", str(wd), "--thresholds", "0.2,0.4,0.6", "--crf",
                            "--save_cams", "--save_labels", *TINY])
    out = capsys.readouterr().out
    curve = res["curves"]["CAM_1"]
    assert len(curve) == 4                  # the sweep plus --bkg_thre 0.5
    t, m = res["best"]["CAM_1"]
    assert m == pytest.approx(np.nanmax(curve)) and t in (0.2, 0.4, 0.5, 0.6)
    assert f"CAM_1: mIoU {100 * res['scores']['CAM_1']['miou']:.2f} at 0.5; best {100 * m:.2f} at {t}" in out
    assert {"PAR_1", "PAR_2", "CRF_1", "CRF_2"} <= set(res["scores"])
    saved = json.loads((wd / "results.json").read_text())
    assert saved["split"] == "train" and saved["checkpoint_step"] == 7
    assert saved["batch_size"] == 8 and saved["amp"] is False and saved["seconds"] > 0   # --size 48: 8 per pass
    assert saved["best_threshold"]["CAM_1"]["threshold"] == t
    assert saved["scores"]["PAR_2"]["miou"] == pytest.approx(res["scores"]["PAR_2"]["miou"])
    ids = sorted(p[:-4] for p in os.listdir(wd / "cams"))
    with np.load(wd / "cams" / f"{ids[0]}.npz") as f:
        assert f["CAM_1"].dtype == np.float16 and f["CAM_1"].shape[0] == len(f["classes"])
    assert sorted(os.listdir(wd / "labels")) == sorted(["CAM_1", "aux_CAM_1", "CAM_2", "aux_CAM_2",
                                                        "PAR_1", "PAR_2", "CRF_1", "CRF_2"])


def test_cam_labels_threshold_the_best_present_class():
    cam = torch.tensor([[[0.2, 0.6]], [[0.7, 0.1]]])      # (2 classes, 1, 2)
    present = torch.tensor([0])                           # only class 1 present
    best, cls = best_present_class(cam[present], present)
    out = [torch.where(best > t, cls, 0) for t in (0.1, 0.5)]
    assert [o.tolist() for o in out] == [[[1, 1]], [[0, 1]]]


def test_best_present_class_equals_the_maximum_with_absent_classes_at_zero():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(20, 9, 11, generator=g)
    cams[3, :2] = cams[7, :2]                             # a tie between two present classes: the lower id
    cams[:, 4] = 0                                        # a row where every class scores 0
    for present in (torch.tensor([3, 7, 12]), torch.tensor([5]), torch.arange(20)):
        label = torch.zeros(20)
        label[present] = 1
        value, index = (cams * label[:, None, None]).max(dim=0)
        best, cls = best_present_class(cams[present], present)
        assert torch.equal(best, value)
        for t in (0.0, 0.3, 0.5):
            assert torch.equal(torch.where(best > t, cls, 0), torch.where(value > t, index + 1, 0))
    best, cls = best_present_class(cams[:0], torch.tensor([], dtype=torch.long))   # no class: background
    assert best.shape == cls.shape == (9, 11) and not best.any() and not cls.any()


def test_coco_cam_evaluation_runs_sharded_and_matches_one_process(coco_copy, tmp_path):
    torch.manual_seed(2)
    ckpt = tmp_path / "coco.pth"
    torch.save({"model": DualStudentNet("deit_tiny_patch16_224", 81, aux_layer=9).state_dict()}, ckpt)
    args = ["--img_folder", str(coco_copy / "JPEGImages"), "--model_path", str(ckpt), "--infer_set", "val",
            "--no-par", *TINY]
    single = eval_cam_coco.run(args + ["--work_dir", str(tmp_path / "one")])
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port", str(29500 + os.getpid() % 90), "eval_cam_coco.py", *args,
                          "--work_dir", str(tmp_path / "two")],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for col in ("CAM_1", "aux_CAM_2"):
        assert two["scores"][col]["miou"] == pytest.approx(single["scores"][col]["miou"], abs=1e-9)


def test_batches_and_amp_without_bf16_give_the_numbers_of_one_image_at_a_time(voc_copy, checkpoint, tmp_path,
                                                                               monkeypatch, capsys):
    from utils import precision
    base = ["--data_folder", str(voc_copy), "--model_path", str(checkpoint), "--infer_set", "val",
            "--thresholds", "0.1,0.3,0.5,0.7", *TINY]
    one = eval_cam_voc.run(base + ["--work_dir", str(tmp_path / "b1"), "--batch_size", "1"])
    three = eval_cam_voc.run(base + ["--work_dir", str(tmp_path / "b3"), "--batch_size", "3"])
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    capsys.readouterr()
    fp32 = eval_cam_voc.run(base + ["--work_dir", str(tmp_path / "amp"), "--batch_size", "3", "--amp"])
    said = capsys.readouterr()
    assert "--amp: this CPU has no bf16" in said.out + said.err
    for res in (three, fp32):
        assert res["curves"] == one["curves"]
        for col, s in one["scores"].items():
            np.testing.assert_array_equal(res["scores"][col]["iou"], s["iou"])


def test_default_batch_fills_the_tokens_of_one_448_image():
    assert default_batch_size(448, (1.0, 0.5, 1.5), 16) == 1
    assert default_batch_size(224, (1.0, 0.5, 1.5), 16) == 4
    assert default_batch_size(128, (1.0, 0.5, 1.5), 16) == 8          # at most 8
    assert default_batch_size(448, (1.0, 0.5, 1.5), 14) == 1          # more tokens than the budget: still 1
    assert default_batch_size(448, (1.0,), 16) == 2


def test_bad_values_are_one_line_errors(voc_copy, checkpoint, one_line_error):
    base = ["--data_folder", str(voc_copy), "--model_path", str(checkpoint)]
    assert "--thresholds" in one_line_error(eval_cam_voc.run, base + ["--thresholds", "0,1.5"])
    assert "--size" in one_line_error(eval_cam_voc.run, base + ["--size", "50"])
    assert "--batch_size" in one_line_error(eval_cam_voc.run, base + ["--batch_size", "0"])
    assert "--model_path" in one_line_error(eval_cam_voc.run, ["--data_folder", str(voc_copy)])
    assert "--crf_batch" in one_line_error(eval_cam_voc.run, base + ["--crf", "--crf_batch", "0"])
    assert "--crf_class_chunk" in one_line_error(eval_cam_voc.run, base + ["--crf", "--crf_class_chunk", "-1"])


@pytest.mark.pydensecrf
def test_crf_columns_agree_between_backends_and_torch_batches(voc_copy, checkpoint, tmp_path):
    res = {}
    for name, flags in (("pydensecrf", ["--crf_backend", "pydensecrf"]), ("torch", ["--crf_backend", "torch"]),
                        ("batched", ["--crf_backend", "torch", "--crf_batch", "3", "--crf_class_chunk", "2"])):
        res[name] = eval_cam_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoint),
                                      "--infer_set", "val", "--work_dir", str(tmp_path / name), "--crf",
                                      *flags, "--no-par", *TINY])
    for k in ("CRF_1", "CRF_2"):
        assert abs(res["torch"]["scores"][k]["miou"] - res["pydensecrf"]["scores"][k]["miou"]) <= 0.001
        # batches of images with the same classes, classes filtered two at a time: the same labels
        assert res["batched"]["scores"][k]["miou"] == pytest.approx(res["torch"]["scores"][k]["miou"], abs=1e-4)
        torch_mat, batched_mat = (np.asarray(res[n]["scores"][k]["iou"]) for n in ("torch", "batched"))
        np.testing.assert_allclose(batched_mat, torch_mat, atol=1e-3)
