"""visualize_cams.py draws one grid per image: CAMs per class and student, PAR labels, prediction."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import visualize_cams
from datasets.lists import load_labels, read_list
from model.network import DualStudentNet

TINY = ["--backbone", "deit_tiny_patch16_224", "--size", "64", "--cpu", "--single_scale"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": net.state_dict()}, path)
    return str(path)


def _size(path):
    with Image.open(path) as img:
        return img.size


def test_split_mode_draws_one_grid_per_image_with_a_tile_per_class(tiny_ckpt, voc_copy, tmp_path,
                                                                   capsys):
    out = tmp_path / "vis"
    visualize_cams.main(["--model_path", tiny_ckpt, "--data_folder", str(voc_copy), "--split", "val",
                         "--num_images", "2", "--out", str(out), *TINY])
    lists = str(voc_copy) + "_lists"
    ids = read_list(os.path.join(lists, "val.txt"))[:2]
    labels = load_labels(lists)
    assert sorted(os.listdir(out)) == sorted(i + ".png" for i in ids)
    for img_id in ids:
        w, h = _size(voc_copy / "JPEGImages" / f"{img_id}.jpg")
        n = int(np.asarray(labels[img_id]).sum())
        # row 1: image + n CAMs per student; row 2: 2 PAR labels, prediction, ground truth
        assert _size(out / f"{img_id}.png") == (max(1 + 2 * n, 4) * w, 2 * h)
        grid = np.asarray(Image.open(out / f"{img_id}.png"))
        assert np.array_equal(grid[h // 2, w // 2], np.asarray(Image.open(
            voc_copy / "JPEGImages" / f"{img_id}.jpg").convert("RGB"))[h // 2, w // 2])
    assert "drew 2 grid(s)" in capsys.readouterr().out


def test_images_mode_with_labels_and_with_predicted_classes(tiny_ckpt, tmp_path,
                                                            capsys):
    rng = np.random.default_rng(0)
    gray, odd = tmp_path / "gray.jpg", tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(gray)
    Image.fromarray(rng.integers(0, 256, (45, 33, 4), dtype=np.uint8)).save(odd)
    out = tmp_path / "vis"
    visualize_cams.main(["--model_path", tiny_ckpt, "--images", str(gray), str(odd),
                         "--labels", "dog, Person", "--out", str(out), *TINY])
    # row 1: image + 2 classes x 2 students = 5 tiles; row 2: 2 PAR labels + prediction
    assert _size(out / "gray.png") == (5 * 56, 2 * 40)
    assert _size(out / "odd.png") == (5 * 33, 2 * 45)
    assert "dog, person" in capsys.readouterr().out

    out2 = tmp_path / "vis2"
    visualize_cams.main(["--model_path", tiny_ckpt, "--images", str(gray), "--out", str(out2),
                         "--branch", "1", *TINY])
    w, h = _size(out2 / "gray.png")
    assert h == 80 and w % 56 == 0 and w // 56 >= 3  # at least one predicted class


def test_missing_checkpoint_image_or_unknown_label_is_one_line(tiny_ckpt, tmp_path, one_line_error):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img)
    out = ["--out", str(tmp_path / "o"), *TINY]
    vis = visualize_cams.main
    err = one_line_error(vis, ["--model_path", str(tmp_path / "nope.pth"), "--images", str(img), *out])
    assert "nope.pth" in err
    err = one_line_error(vis, ["--model_path", tiny_ckpt, "--images", str(tmp_path / "b.jpg"), *out])
    assert "b.jpg" in err
    err = one_line_error(vis, ["--model_path", tiny_ckpt, "--images", str(img), "--labels", "unicorn",
                               *out])
    assert "unicorn" in err
    err = one_line_error(vis, ["--model_path", tiny_ckpt, "--images", str(img), "--num_classes", "81",
                               *out])
    assert "classes" in err
