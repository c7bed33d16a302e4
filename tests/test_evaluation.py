"""Multi-scale + CRF evaluation on VOC and COCO layouts, one process and sharded."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import eval_seg_coco_ddp
import eval_seg_voc
from datasets.lists import read_list
from model.network import DualStudentNet
from engine.crf import pydensecrf_job
from engine.evaluation import column_predictions, crf_inputs, crf_outputs, multiscale_logits
from engine.inference import (coco_msc_logits, load_logits, save_logits, select_branch, voc_msc_logits,
                             voc_raw_logits)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "deit_tiny_patch16_224", "--num_workers", "0", "--cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    voc = DualStudentNet("deit_tiny_patch16_224", 21)
    torch.save({"model": voc.state_dict(), "step": 1}, root / "voc.pth")
    # the original saves the DDP state dict: bare, keys prefixed with "module."
    torch.save({"module." + k: v for k, v in voc.state_dict().items()}, root / "original.pth")
    coco = DualStudentNet("deit_tiny_patch16_224", 81, aux_layer=9)
    torch.save({"model": coco.state_dict()}, root / "coco.pth")
    return root


def _pngs(folder):
    return {f: np.array(Image.open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))}


def test_voc_eval_with_crf_scores_saves_logits_and_pngs(voc_copy, checkpoints, tmp_path):
    wd = tmp_path / "eval"
    res = eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"),
                            "--work_dir", str(wd), "--crf_workers", "1", "--scales", "1.0 0.5", *TINY])
    assert {"Seg_1", "Seg_2", "Ensemble", "CRF_ensemble"} <= set(res)
    val = read_list(str(voc_copy) + "_lists/val.txt")
    for sub in ("prediction", "prediction_color", "crf", "crf_color"):
        assert sorted(os.listdir(wd / sub)) == sorted(i + ".png" for i in val)
    img = Image.open(voc_copy / "JPEGImages" / f"{val[0]}.jpg")
    pred = Image.open(wd / "crf_color" / f"{val[0]}.png")
    assert pred.mode == "P" and pred.size == img.size
    assert sorted(os.listdir(wd / "logits")) == sorted(i + ".npz" for i in val)
    assert load_logits(str(wd / "logits" / f"{val[0]}.npz")).shape == (21, img.size[1], img.size[0])


def test_saved_prediction_is_the_chosen_branch(voc_copy, checkpoints, tmp_path):
    wd = tmp_path / "b1"
    eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"),
                      "--work_dir", str(wd), "--no-crf", "--branch", "1", "--scales", "1.0", *TINY])
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    net.load_state_dict(torch.load(checkpoints / "voc.pth")["model"])
    net.eval()
    from datasets.layout import voc_layout
    from datasets.segmentation import EvalDataset
    ds = EvalDataset(voc_layout(str(voc_copy)), str(voc_copy) + "_lists", "val")
    img_id, image, _, _ = ds[0]
    logits = voc_msc_logits(net, image[None], (1.0,))
    expected = select_branch(logits, "1").argmax(1)[0].numpy()
    np.testing.assert_array_equal(np.array(Image.open(wd / "prediction" / f"{img_id}.png")), expected)
    assert not os.listdir(wd / "crf")


def test_crf_worker_count_does_not_change_results(voc_copy, checkpoints, tmp_path):
    outs = []
    for workers in ("1", "2"):
        wd = tmp_path / f"w{workers}"
        res = eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path",
                                str(checkpoints / "voc.pth"), "--work_dir", str(wd), "--crf_workers",
                                workers, "--scales", "1.0", *TINY])
        outs.append((res["CRF_ensemble"]["miou"], _pngs(wd / "crf")))
    assert outs[0][0] == outs[1][0]
    assert outs[0][1].keys() == outs[1][1].keys()
    assert all(np.array_equal(outs[0][1][k], outs[1][1][k]) for k in outs[0][1])


def test_test_split_writes_predictions_only(voc_copy, checkpoints, tmp_path):
    wd = tmp_path / "test"
    res = eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"),
                            "--infer_set", "test", "--work_dir", str(wd), "--crf_workers", "1",
                            "--scales", "1.0", *TINY])
    assert res == {}
    test_ids = read_list(str(voc_copy / "ImageSets" / "Segmentation" / "test.txt"))
    assert sorted(os.listdir(wd / "crf")) == sorted(i + ".png" for i in test_ids)


def test_original_checkpoint_format_is_accepted(voc_copy, checkpoints, tmp_path):
    a = eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "original.pth"),
                          "--work_dir", str(tmp_path / "o"), "--no-crf", "--scales", "1.0", *TINY])
    b = eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"),
                          "--work_dir", str(tmp_path / "p"), "--no-crf", "--scales", "1.0", *TINY])
    assert a["Ensemble"]["miou"] == b["Ensemble"]["miou"]


@pytest.mark.parametrize("ckpt,extra,message", [
    ("missing.pth", [], "--model_path .*missing.pth does not exist"),
    ("coco.pth", [], "trained with 81 classes but voc has 21"),
    ("voc.pth", ["--backbone", "deit_small_patch16_224"], "holds a ViT-tiny/16"),
])
def test_bad_checkpoints_give_one_line_errors(voc_copy, checkpoints, tmp_path, one_line_error, ckpt,
                                              extra, message):
    err = one_line_error(eval_seg_voc.run, ["--data_folder", str(voc_copy), "--model_path",
                                            str(checkpoints / ckpt), "--work_dir", str(tmp_path / "x"),
                                            "--no-crf", *TINY, *extra])
    import re
    assert re.search(message, err), err


@pytest.mark.slow
def test_coco_eval_two_processes_equal_one_process(coco_copy, checkpoints, tmp_path):
    args = ["--img_folder", str(coco_copy / "JPEGImages"), "--model_path", str(checkpoints / "coco.pth"),
            "--infer_set", "val", "--crf_workers", "1", "--scales", "1.0 1.25",
            "--backbone", "deit_tiny_patch16_224", "--num_workers", "0", "--cpu"]
    single = eval_seg_coco_ddp.run(args + ["--work_dir", str(tmp_path / "one")])
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port", str(29900 + os.getpid() % 90), "eval_seg_coco_ddp.py",
                          *args, "--work_dir", str(tmp_path / "two")],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for k, v in single.items():
        line = f"{k} {100 * v['miou']:.2f}"
        assert line in res.stdout, (line, res.stdout[-1500:])
    assert _pngs(tmp_path / "one" / "crf").keys() == _pngs(tmp_path / "two" / "crf").keys()


@pytest.mark.pydensecrf
def test_crf_refines_the_float32_probabilities(voc_copy, checkpoints, tmp_path):
    wd = tmp_path / "crf32"
    eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"),
                      "--work_dir", str(wd), "--crf_workers", "2", "--scales", "1.0", *TINY])
    from datasets.layout import voc_layout
    from datasets.segmentation import EvalDataset
    from engine.crf import dense_crf
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    net.load_state_dict(torch.load(checkpoints / "voc.pth")["model"])
    net.eval()
    ds = EvalDataset(voc_layout(str(voc_copy)), str(voc_copy) + "_lists", "val")
    for i in range(2):
        img_id, image, _, _ = ds[i]
        probs = select_branch(voc_msc_logits(net, image[None], (1.0,)), "ensemble").softmax(1)[0]
        expected = dense_crf(ds.raw_image(i), probs.numpy().astype(np.float32))
        np.testing.assert_array_equal(np.array(Image.open(wd / "crf" / f"{img_id}.png")), expected)


def _tiny_net(path):
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    net.load_state_dict(torch.load(path)["model"])
    return net.eval()


@pytest.mark.parametrize("branch", ["1", "2", "ensemble"])
def test_saved_voc_logits_rebuild_every_branch_exactly(checkpoints, tmp_path, branch):
    net = _tiny_net(checkpoints / "voc.pth")
    torch.manual_seed(1)
    image = torch.randn(1, 3, 61, 83)
    scales = (1.0, 1.5, 1.25)
    save_logits(str(tmp_path / "a.npz"), "voc", voc_raw_logits(net, image, scales), (61, 83), scales)
    expected = select_branch(voc_msc_logits(net, image, scales), branch)[0].numpy()
    np.testing.assert_array_equal(load_logits(str(tmp_path / "a.npz"), branch), expected)



@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_one_image_gives_the_network_outputs_saved_and_the_three_columns(checkpoints, dataset):
    """multiscale_logits keeps the outputs save_logits writes (VOC: before resizing) and the rule's
    logits; column_predictions gives student 1, student 2 and the argmax of their mean softmax at
    the image size."""
    torch.manual_seed(2)
    net = _tiny_net(checkpoints / "voc.pth")
    image = torch.randn(3, 45, 61)
    scales = (1.0, 1.25)
    raw, logits = multiscale_logits(net, image, dataset, scales, torch.device("cpu"), amp=False)
    if dataset == "voc":
        expected_raw, expected = voc_raw_logits(net, image[None], scales), voc_msc_logits(net, image[None], scales)
        assert all(torch.equal(a, b) for ra, rb in zip(raw, expected_raw) for a, b in zip(ra, rb))
    else:
        expected = coco_msc_logits(net, image[None], scales=scales)
        assert all(torch.equal(a, b) for a, b in zip(raw, expected))
    assert all(torch.equal(a, b) for a, b in zip(logits, expected))
    preds = column_predictions(logits, (45, 61))
    full = [torch.nn.functional.interpolate(l, size=(45, 61), mode="bilinear", align_corners=False)
            if l.shape[-2:] != (45, 61) else l for l in expected]
    assert torch.equal(preds[0], full[0][0].argmax(0)) and torch.equal(preds[1], full[1][0].argmax(0))
    assert torch.equal(preds[2], ((full[0].softmax(1) + full[1].softmax(1)) / 2)[0].argmax(0))
    assert all(p.shape == (45, 61) for p in preds)

def test_saved_coco_logits_rebuild_the_upsampled_branch(checkpoints, tmp_path):
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 81, aux_layer=9).eval()
    image = torch.randn(1, 3, 50, 70)
    logits = coco_msc_logits(net, image, scales=(1.0, 1.25))
    save_logits(str(tmp_path / "c.npz"), "coco", logits, (50, 70), (1.0, 1.25))
    expected = torch.nn.functional.interpolate(select_branch(logits, "2"), size=(50, 70),
                                               mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_array_equal(load_logits(str(tmp_path / "c.npz"), "2"), expected)


def test_saved_logits_are_an_eighth_of_full_resolution_float32_at_voc_size(checkpoints, tmp_path):
    """The original saves both students' float32 logits at full resolution (33 MiB for a
    470 x 444 VOC image); the saved network outputs must take at most 1/8 of that."""
    net = _tiny_net(checkpoints / "voc.pth")
    h, w = 470, 444
    raw = voc_raw_logits(net, torch.randn(1, 3, h, w))
    save_logits(str(tmp_path / "v.npz"), "voc", raw, (h, w), (1.0, 1.5, 1.25))
    assert os.path.getsize(tmp_path / "v.npz") <= 2 * 21 * h * w * 4 / 8


@pytest.mark.pydensecrf
def test_crf_rerun_from_the_saved_file_equals_the_evaluation(voc_copy, checkpoints, tmp_path):
    wd = tmp_path / "rerun"
    eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"),
                      "--work_dir", str(wd), "--crf_workers", "1", "--scales", "1.0 1.5", *TINY])
    (tmp_path / "again").mkdir()
    (tmp_path / "again_color").mkdir()
    val = read_list(str(voc_copy) + "_lists/val.txt")
    for img_id in val[:3]:
        pydensecrf_job(crf_inputs, crf_outputs, (img_id, str(voc_copy / "JPEGImages" / f"{img_id}.jpg"),
                 (str(wd / "logits" / f"{img_id}.npz"), "ensemble"), None, 21,
                 str(tmp_path / "again"), str(tmp_path / "again_color")))
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "again" / f"{img_id}.png")),
                                      np.array(Image.open(wd / "crf" / f"{img_id}.png")))


def _table_mious(text, columns):
    """The mIoU row of the first printed table with these columns, as {column: value}."""
    lines = text.splitlines()
    head = [i for i, l in enumerate(lines) if l.split()[:1] == ["Class"] and l.split()[1:] == list(columns)][0]
    row = [l for l in lines[head:] if l.startswith("mIoU")][0].split()[1:]
    return dict(zip(columns, (float(v) for v in row)))


def test_best_on_gt_picks_the_student_with_the_higher_miou_and_says_so(voc_copy, checkpoints, tmp_path, capsys):
    base = ["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"), "--scales", "1.0", *TINY]
    scores = eval_seg_voc.run(base + ["--work_dir", str(tmp_path / "plain"), "--no-crf", "--branch", "1"])
    expected = "1" if scores["Seg_1"]["miou"] >= scores["Seg_2"]["miou"] else "2"
    capsys.readouterr()
    res = eval_seg_voc.run(base + ["--work_dir", str(tmp_path / "best"), "--crf_workers", "1",
                                   "--branch", "best_on_gt"])
    out = capsys.readouterr().out
    assert f"student {expected} chosen by its mIoU on the val ground truth" in out
    assert f"CRF_{expected}" in res
    # its predictions are that student's, as a run with --branch <that student> writes them
    eval_seg_voc.run(base + ["--work_dir", str(tmp_path / "fixed"), "--no-crf", "--branch", expected])
    assert _pngs(tmp_path / "best" / "prediction").keys() == _pngs(tmp_path / "fixed" / "prediction").keys()
    for (_, a), (_, b) in zip(_pngs(tmp_path / "best" / "prediction").items(),
                              _pngs(tmp_path / "fixed" / "prediction").items()):
        assert np.array_equal(a, b)
    import json
    saved = json.loads((tmp_path / "best" / "results.json").read_text())
    assert saved["branch_rule"] == "best_on_gt" and saved["branch"] == expected


def test_best_on_gt_is_refused_on_a_split_without_ground_truth(voc_copy, checkpoints, one_line_error):
    msg = one_line_error(eval_seg_voc.run, ["--data_folder", str(voc_copy), "--model_path",
                                            str(checkpoints / "voc.pth"), "--infer_set", "test",
                                            "--branch", "best_on_gt", *TINY])
    assert "best_on_gt" in msg and "test" in msg


def test_best_on_gt_choice_uses_all_ranks(voc_copy, checkpoints, tmp_path):
    args = ["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"), "--scales", "1.0",
            "--no-crf", "--branch", "best_on_gt", *TINY]
    single = eval_seg_voc.run(args + ["--work_dir", str(tmp_path / "one")])
    expected = "1" if single["Seg_1"]["miou"] >= single["Seg_2"]["miou"] else "2"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port", str(29700 + os.getpid() % 90), "eval_seg_voc.py",
                          *args, "--work_dir", str(tmp_path / "two")],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"student {expected} chosen" in res.stdout
    assert _pngs(tmp_path / "one" / "prediction").keys() == _pngs(tmp_path / "two" / "prediction").keys()


def test_results_json_holds_the_printed_scores(voc_copy, checkpoints, tmp_path, capsys):
    import json
    wd = tmp_path / "res"
    capsys.readouterr()
    eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(checkpoints / "voc.pth"),
                      "--work_dir", str(wd), "--crf_workers", "1", "--scales", "1.0 0.5", *TINY])
    printed = capsys.readouterr().out
    saved = json.loads((wd / "results.json").read_text())
    assert saved["split"] == "val" and saved["scales"] == [1.0, 0.5] and saved["branch"] == "ensemble"
    assert saved["checkpoint_step"] == 1 and saved["checkpoint"].endswith("voc.pth") and saved["crf"] is True
    table = _table_mious(printed, ["Seg_1", "Seg_2", "Ensemble"])
    for column, value in table.items():
        assert round(100 * saved["scores"][column]["miou"], 3) == pytest.approx(value, abs=1e-9)
    assert saved["scores"]["CRF_ensemble"]["miou"] is not None
    text = (wd / "results.txt").read_text()
    assert _table_mious(text, ["Seg_1", "Seg_2", "Ensemble"]) == table
    iou = saved["scores"]["Seg_1"]["iou"]
    assert set(iou) >= {"bg", "aeroplane", "person"} and iou["bicycle"] is None   # no bicycle GT
