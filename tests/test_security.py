"""Downloaded files cannot run code: checkpoints, list folders, annotations and images.

Each crafted file carries a payload that would create a marker file if it were unpickled
(``__reduce__`` -> ``open(marker, "w")``); every script must refuse it in one line (exit 2)
before anything of it runs, while the project's own files and the original's formats still load.
"""
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch

import eval_cam_coco
import eval_cam_voc
import eval_seg_coco_ddp
import eval_seg_voc
import infer
import train_final_coco
import train_final_voc
import visualize_cams
from datasets.layout import voc_layout
from datasets.lists import (LABELS_FILE, ORIGINAL_LABELS_FILE, ensure_lists, load_labels,
                              read_list, voc_xml_labels)
from datasets.readers import read_image
from utils.checkpoint import read_checkpoint
from model.network import DualStudentNet
from utils.errors import UserError
from engine.run_state import plain, rng_state, set_rng_state

TINY = ["--backbone", "deit_tiny_patch16_224", "--cpu"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the loader trusts it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "evil.pth"
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    torch.save({"model": net.state_dict(), "step": 1, "extra": Payload(marker)}, ckpt)
    return marker, ckpt


def _refused_checkpoint(line, path):
    assert "refused checkpoint" in line and str(path) in line and "open)" in line, line


@pytest.mark.parametrize("script", ["eval_seg_voc", "eval_cam_voc", "infer", "visualize_cams",
                                    "train_final_voc"])
def test_a_crafted_checkpoint_is_refused_by_every_voc_script(script, evil, voc_copy, tmp_path,
                                                             one_line_error):
    marker, ckpt = evil
    data = ["--data_folder", str(voc_copy)]
    out = str(tmp_path / "out")
    entry, argv = {
        "eval_seg_voc": (eval_seg_voc.run, [*data, "--model_path", str(ckpt), "--work_dir", out, *TINY]),
        "eval_cam_voc": (eval_cam_voc.run, [*data, "--model_path", str(ckpt), "--work_dir", out, *TINY]),
        "infer": (infer.main, ["--model_path", str(ckpt), "--input", str(voc_copy / "JPEGImages"),
                               "--out", out, *TINY]),
        "visualize_cams": (visualize_cams.main, [*data, "--model_path", str(ckpt), "--out", out, *TINY]),
        "train_final_voc": (train_final_voc.run, [*data, "--resume", str(ckpt), "--work_dir", out,
                                                  "--no-pretrained", *TINY]),
    }[script]
    _refused_checkpoint(one_line_error(entry, argv), ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("script", ["eval_seg_coco_ddp", "eval_cam_coco", "train_final_coco"])
def test_a_crafted_checkpoint_is_refused_by_every_coco_script(script, evil, coco_copy, tmp_path,
                                                              one_line_error):
    marker, ckpt = evil
    data = ["--img_folder", str(coco_copy / "JPEGImages")]
    out = str(tmp_path / "out")
    entry, argv = {
        "eval_seg_coco_ddp": (eval_seg_coco_ddp.run, [*data, "--model_path", str(ckpt),
                                                      "--work_dir", out, *TINY]),
        "eval_cam_coco": (eval_cam_coco.run, [*data, "--model_path", str(ckpt), "--work_dir", out, *TINY]),
        "train_final_coco": (train_final_coco.run, [*data, "--resume", str(ckpt), "--work_dir", out,
                                                    "--no-pretrained", *TINY]),
    }[script]
    _refused_checkpoint(one_line_error(entry, argv), ckpt)
    assert not marker.exists()


def test_own_and_original_checkpoints_load_with_the_safe_reader(tmp_path):
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    original = tmp_path / "original.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, original)
    assert set(read_checkpoint(str(original))) == {"module." + k for k in net.state_dict()}
    # a checkpoint of an earlier run of this project kept numpy's RNG state as an array
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": net.state_dict(), "rng": {"numpy": np.random.get_state()}}, legacy)
    assert read_checkpoint(str(legacy))["rng"]["numpy"][1].dtype == np.uint32


def test_rng_state_is_plain_data_and_restores_every_generator(tmp_path):
    import random
    state = rng_state()
    path = tmp_path / "rng.pth"
    torch.save({"rng": state, "args": plain({"scales": (0.5, 2.0), "x": object()})}, path)
    loaded = torch.load(path, weights_only=True)        # no numpy, no custom class needed
    assert loaded["args"]["scales"] == [0.5, 2.0] and isinstance(loaded["args"]["x"], str)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def _evil_labels(folder, marker):
    np.save(os.path.join(folder, ORIGINAL_LABELS_FILE), np.array(Payload(marker), dtype=object))


@pytest.fixture
def evil_lists(voc_copy, tmp_path):
    """A list folder with real split lists and a crafted original-format labels file."""
    lists = tmp_path / "lists"
    derived = ensure_lists(voc_layout(str(voc_copy)), None, ["train_aug", "val"], log=lambda *_: None)
    lists.mkdir()
    for name in ("train_aug.txt", "val.txt"):
        shutil.copy(os.path.join(derived, name), lists / name)
    marker = tmp_path / "PWNED"
    _evil_labels(str(lists), marker)
    return lists, marker


@pytest.mark.parametrize("script", ["train_final_voc", "eval_cam_voc", "visualize_cams"])
def test_a_crafted_labels_file_is_refused_by_the_scripts_that_read_labels(script, evil_lists, voc_copy,
                                                                          tmp_path, one_line_error):
    lists, marker = evil_lists
    ckpt = tmp_path / "net.pth"
    torch.save({"model": DualStudentNet("deit_tiny_patch16_224", 21).state_dict()}, ckpt)
    common = ["--data_folder", str(voc_copy), "--list_folder", str(lists), *TINY]
    out = str(tmp_path / "out")
    entry, argv = {
        "train_final_voc": (train_final_voc.run, [*common, "--work_dir", out, "--no-pretrained"]),
        "eval_cam_voc": (eval_cam_voc.run, [*common, "--model_path", str(ckpt), "--work_dir", out]),
        "visualize_cams": (visualize_cams.main, [*common, "--model_path", str(ckpt), "--out", out]),
    }[script]
    line = one_line_error(entry, argv)
    assert "refused image-level labels" in line and ORIGINAL_LABELS_FILE in line, line
    assert "open is not allowed" in line, line
    assert not marker.exists()


def test_own_labels_need_no_pickle_and_the_original_format_still_loads(voc_copy, tmp_path):
    lists = ensure_lists(voc_layout(str(voc_copy)), None, ["train_aug", "val"], log=lambda *_: None)
    assert os.path.isfile(os.path.join(lists, LABELS_FILE))
    with np.load(os.path.join(lists, LABELS_FILE), allow_pickle=False) as f:
        assert f["labels"].shape == (len(f["names"]), 20)
    labels = load_labels(lists)
    assert set(read_list(os.path.join(lists, "train_aug.txt"))) <= set(labels)
    # the original's file: np.save of a dict of float32 vectors, read by the restricted reader
    original = tmp_path / "original"
    original.mkdir()
    np.save(original / ORIGINAL_LABELS_FILE, labels)
    back = load_labels(str(original))
    assert back.keys() == labels.keys()
    assert all(np.array_equal(back[k], labels[k]) for k in labels)


def test_a_labels_file_of_another_kind_is_a_one_line_error(tmp_path):
    np.save(tmp_path / ORIGINAL_LABELS_FILE, np.zeros((3, 20), np.float32))
    with pytest.raises(UserError, match="cannot read image-level labels .*not a pickled dict"):
        load_labels(str(tmp_path))


def test_annotations_with_entities_are_refused_without_expanding_them(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY a "cat">'
                    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
                    '<annotation><object><name>&b;</name></object></annotation>')
    with pytest.raises(UserError, match=f"refused annotation {bomb}: it declares a DTD"):
        voc_xml_labels(str(bomb))
    external = tmp_path / "external.xml"
    external.write_text(f'<!DOCTYPE a [<!ENTITY e SYSTEM "file://{tmp_path}/secret">]>'
                        '<annotation><object><name>&e;</name></object></annotation>')
    with pytest.raises(UserError, match="refused annotation"):
        voc_xml_labels(str(external))
    good = tmp_path / "good.xml"
    good.write_text("<annotation><object><name>cat</name><part><name>head</name></part></object>"
                    "<object><name> dog </name></object></annotation>")
    assert np.flatnonzero(voc_xml_labels(str(good))).tolist() == [7, 11]


def _png_declaring(path, width, height):
    """A valid tiny PNG whose header declares ``width x height`` pixels (its data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_with_its_name(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_declaring(bomb, 12000, 12000)   # above our limit, below the one PIL enforces itself
    assert bomb.stat().st_size < 1000
    with pytest.raises(UserError, match=f"refused image {bomb}: it declares 12000x12000 pixels"):
        read_image(str(bomb))
    _png_declaring(bomb, 30000, 30000)   # above PIL's own limit
    with pytest.raises(UserError, match=f"refused image {bomb}: it declares more pixels"):
        read_image(str(bomb))


def test_a_decompression_bomb_in_the_dataset_stops_evaluation_in_one_line(voc_copy, tmp_path, capsys):
    ckpt = tmp_path / "net.pth"
    torch.save({"model": DualStudentNet("deit_tiny_patch16_224", 21).state_dict()}, ckpt)
    lists = ensure_lists(voc_layout(str(voc_copy)), None, ["val"], log=lambda *_: None)
    first = read_list(os.path.join(lists, "val.txt"))[0]
    _png_declaring(tmp_path / "bomb.png", 20000, 20000)
    shutil.copy(tmp_path / "bomb.png", voc_copy / "JPEGImages" / f"{first}.jpg")  # PIL reads by content
    with pytest.raises(SystemExit) as exc:
        eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(ckpt), "--work_dir",
                          str(tmp_path / "out"), "--no-crf", "--num_workers", "0", *TINY])
    line = capsys.readouterr().err.strip().splitlines()[-1]   # after the progress bar
    assert exc.value.code == 2 and line.startswith("error: refused image") and first in line, line
