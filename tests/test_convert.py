"""convert_voc_rgb.py: VOC test predictions -> evaluation-server PNGs and archive (docs/method.md#evaluation)."""
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = ("2008_000001", "2008_000007", "2009_000123")
SIZES = {"2008_000001": (12, 17), "2008_000007": (9, 9), "2009_000123": (20, 6)}  # (H, W)
SERVER = "results/VOC2012/Segmentation/comp6_test_cls"

# docs/method.md#evaluation, written out rather than computed.
VOC_COLOURS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128),
    (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0),
    (128, 192, 0), (0, 64, 128),
]


def _run(*args):
    return subprocess.run([sys.executable, "convert_voc_rgb.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def case(tmp_path):
    """A fake VOC2012 folder with test JPEGs and a folder of matching index predictions."""
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "test.txt").write_text("\n".join(IDS) + "\n")
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    preds = {}
    for i, img_id in enumerate(IDS):
        h, w = SIZES[img_id]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{img_id}.jpg")
        arr = rng.integers(0, 21, (h, w)).astype(np.uint8)
        arr[0, 0], arr[-1, -1] = 0, 20
        if i == 1:  # a palette input is read as its indices too
            img = Image.fromarray(arr)
            img.putpalette(list(range(256)) * 3)
            img.save(pred / f"{img_id}.png")
        else:
            Image.fromarray(arr).save(pred / f"{img_id}.png")
        preds[img_id] = arr
    return {"voc": voc, "pred": pred, "out": tmp_path / "out", "preds": preds}


def _error_line(res):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_converts_with_server_palette_layout_and_archive(case):
    (case["pred"] / "2010_999999.png").write_bytes(b"not in the list")  # ignored with a note
    res = _run("--input", case["pred"], "--output", case["out"], "--data_folder", case["voc"])
    assert res.returncode == 0, res.stderr
    assert "2010_999999.png" in res.stdout and "ignored" in res.stdout
    summary = res.stdout.strip().splitlines()[-1]
    assert summary.startswith("converted 3 predictions") and "results.tar.gz" in summary

    dst = case["out"] / SERVER
    assert sorted(os.listdir(dst)) == sorted(f"{i}.png" for i in IDS)
    for img_id in IDS:
        with Image.open(dst / f"{img_id}.png") as img:
            assert img.mode == "P"
            pal = np.array(img.getpalette()[:768], np.uint8).reshape(256, 3)
            out = np.asarray(img)
        assert [tuple(c) for c in pal[:21]] == VOC_COLOURS
        assert np.array_equal(pal[21:], np.stack([np.arange(21, 256)] * 3, 1))
        np.testing.assert_array_equal(out, case["preds"][img_id])

    with tarfile.open(case["out"] / "results.tar.gz") as tar:
        names = tar.getnames()
        member = tar.extractfile(f"{SERVER}/{IDS[0]}.png").read()
    expected_dirs = ["results", "results/VOC2012", "results/VOC2012/Segmentation", SERVER]
    assert sorted(names) == sorted(expected_dirs + [f"{SERVER}/{i}.png" for i in IDS])
    assert member == (dst / f"{IDS[0]}.png").read_bytes()


def test_list_flag_and_no_tar(case, tmp_path):
    lst = tmp_path / "mine.txt"
    lst.write_text(IDS[1] + "\n")
    res = _run("--input", case["pred"], "--output", case["out"], "--list", lst, "--no-tar")
    assert res.returncode == 0, res.stderr
    assert os.listdir(case["out"] / SERVER) == [f"{IDS[1]}.png"]
    assert not (case["out"] / "results.tar.gz").exists()
    assert "no archive" in res.stdout.strip().splitlines()[-1]


def test_missing_prediction_names_the_id_and_writes_nothing(case):
    (case["pred"] / f"{IDS[2]}.png").unlink()
    line = _error_line(_run("--input", case["pred"], "--output", case["out"],
                            "--data_folder", case["voc"]))
    assert IDS[2] in line and "no prediction" in line
    assert not case["out"].exists()


def test_wrong_size_is_an_error(case):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(case["pred"] / f"{IDS[0]}.png")
    line = _error_line(_run("--input", case["pred"], "--output", case["out"],
                            "--data_folder", case["voc"]))
    assert IDS[0] in line and "5x5" in line and "17x12" in line
    assert not case["out"].exists()


def test_out_of_range_value_is_an_error(case):
    arr = case["preds"][IDS[1]].copy()
    arr[3, 4] = 255
    Image.fromarray(arr).save(case["pred"] / f"{IDS[1]}.png")
    line = _error_line(_run("--input", case["pred"], "--output", case["out"],
                            "--data_folder", case["voc"]))
    assert IDS[1] in line and "255" in line and "0..20" in line
    assert not case["out"].exists()


def test_flags_are_documented_and_missing_list_is_an_error(case):
    res = _run("--help")
    assert res.returncode == 0
    for flag in ("--input", "--output", "--data_folder", "--list", "--list_folder", "--tar",
                 "--no-tar"):
        assert flag in res.stdout
    line = _error_line(_run("--input", case["pred"], "--output", case["out"]))
    assert "--data_folder" in line and "--list" in line
