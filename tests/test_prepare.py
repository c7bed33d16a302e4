"""Split lists and image-level labels are derived from the dataset itself (docs/data.md#split-lists-and-image-level-labels)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from datasets.classes import COCO_CLASSES, VOC_CLASSES
from datasets.layout import coco_layout, voc_layout
from datasets.lists import (LABELS_FILE, ORIGINAL_LABELS_FILE, ensure_lists, load_labels, mask_labels, prepare_coco,
                              prepare_voc, read_list, voc_xml_labels)
from datasets.readers import read_mask
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stems(folder):
    return sorted(f[:-4] for f in os.listdir(folder))


def test_voc_train_aug_is_every_aug_mask_not_in_val_and_with_foreground(voc_copy, tmp_path):
    lists = tmp_path / "lists"
    summary = prepare_voc(voc_layout(str(voc_copy)), str(lists), log=lambda *_: None)
    val = read_list(str(voc_copy / "ImageSets/Segmentation/val.txt"))
    train_aug = read_list(str(lists / "train_aug.txt"))
    labels = load_labels(str(lists))
    candidates = [i for i in _stems(voc_copy / "SegmentationClassAug") if i not in set(val)]
    assert train_aug == sorted(train_aug) and not set(train_aug) & set(val)
    assert train_aug == [i for i in candidates if labels[i].sum() > 0]
    assert summary["dropped_without_foreground"] == len(candidates) - len(train_aug)
    assert read_list(str(lists / "val.txt")) == sorted(val)
    assert read_list(str(lists / "test.txt")) == sorted(
        read_list(str(voc_copy / "ImageSets/Segmentation/test.txt")))
    assert set(read_list(str(lists / "train.txt"))) <= set(candidates)
    assert summary["splits"]["train_aug"] == len(train_aug)


def test_voc_labels_come_from_xml_names_ignoring_parts(voc_copy, tmp_path):
    lists = tmp_path / "lists"
    prepare_voc(voc_layout(str(voc_copy)), str(lists), log=lambda *_: None)
    labels = load_labels(str(lists))
    for img_id in read_list(str(lists / "train_aug.txt"))[:10]:
        xml = (voc_copy / "Annotations" / f"{img_id}.xml").read_text()
        expected = np.zeros(20, np.float32)
        for c, name in enumerate(VOC_CLASSES[1:]):
            if f"<name>{name}</name>" in xml:
                expected[c] = 1
        assert labels[img_id].dtype == np.float32 and labels[img_id].shape == (20,)
        np.testing.assert_array_equal(labels[img_id], expected)


def test_xml_parser_counts_classes_and_skips_part_names(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name>person</name><part><name>head</name></part>"
                   "<difficult>1</difficult></object><object><name>dog</name></object>"
                   "<object><name>person</name></object></annotation>")
    label = voc_xml_labels(str(xml))
    assert np.flatnonzero(label).tolist() == [VOC_CLASSES.index("dog") - 1,
                                              VOC_CLASSES.index("person") - 1]


def test_voc_labels_fall_back_to_masks_and_disagreements_are_counted(voc_copy, tmp_path):
    ids = _stems(voc_copy / "Annotations")
    for img_id in ids[::2]:
        os.remove(voc_copy / "Annotations" / f"{img_id}.xml")
    # one XML names a class its mask does not contain
    victim = ids[1]
    xml_path = voc_copy / "Annotations" / f"{victim}.xml"
    xml_path.write_text(xml_path.read_text().replace(
        "</annotation>", "<object><name>sofa</name></object></annotation>"))
    lists = tmp_path / "lists"
    log = []
    summary = prepare_voc(voc_layout(str(voc_copy)), str(lists), log=log.append)
    labels = load_labels(str(lists))
    for img_id in ids[::2]:
        mask = read_mask(str(voc_copy / "SegmentationClassAug" / f"{img_id}.png"), 21)
        expected = np.zeros(20, np.float32)
        for v in set(np.unique(mask).tolist()) - {0, 255}:
            expected[v - 1] = 1
        np.testing.assert_array_equal(labels[img_id], expected)
    assert labels[victim][VOC_CLASSES.index("sofa") - 1] == 1
    assert summary["labels_from_masks"] == len(ids[::2])
    assert summary["xml_mask_disagreements"] >= 1
    assert any("disagree on" in line for line in log)


def test_coco_lists_keep_images_with_objects_and_labels_have_80_classes(coco_copy, tmp_path):
    layout = coco_layout(str(coco_copy / "JPEGImages"))
    assert layout.mask_root == os.path.normpath(str(coco_copy / "SegmentationClass"))
    lists = tmp_path / "lists"
    prepare_coco(layout, str(lists), log=lambda *_: None)
    labels = load_labels(str(lists))
    for split, sub in (("train", "train2014"), ("val", "val2014")):
        ids = read_list(str(lists / f"{split}.txt"))
        all_ids = _stems(coco_copy / "SegmentationClass" / sub)
        with_fg = [i for i in all_ids
                   if mask_labels(str(coco_copy / "SegmentationClass" / sub / f"{i}.png"), 81).sum()]
        assert ids == with_fg
        assert all(labels[i].shape == (len(COCO_CLASSES) - 1,) for i in ids)
    assert read_list(str(lists / "val_part.txt")) == read_list(str(lists / "val.txt"))[:5000]


def test_ensure_lists_derives_once_then_reuses(voc_copy):
    layout = voc_layout(str(voc_copy))
    folder = ensure_lists(layout, None, ["train_aug", "val"], log=lambda *_: None)
    assert folder == str(voc_copy) + "_lists"
    stamp = os.path.getmtime(os.path.join(folder, LABELS_FILE))
    calls = []
    assert ensure_lists(layout, None, ["train_aug", "val"], log=calls.append) == folder
    assert calls == [] and os.path.getmtime(os.path.join(folder, LABELS_FILE)) == stamp


def test_user_supplied_list_folder_is_used_as_is(voc_copy, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "train_aug.txt").write_text("2012_000001\n")
    (own / "val.txt").write_text("2012_000002\n")
    np.save(own / ORIGINAL_LABELS_FILE, {"2012_000001": np.ones(20, np.float32)})  # the original's format
    assert ensure_lists(voc_layout(str(voc_copy)), str(own), ["train_aug", "val"]) == str(own)
    assert read_list(str(own / "train_aug.txt")) == ["2012_000001"]


def test_bad_data_folders_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        voc_layout(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a VOC2012 folder"):
        voc_layout(str(tmp_path))
    with pytest.raises(UserError, match="not a COCO 2014 image folder"):
        coco_layout(str(tmp_path))
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(UserError, match="val.txt does not exist"):
        prepare_voc(voc_layout(str(tmp_path)), str(tmp_path / "l"), log=lambda *_: None)


def test_mask_without_image_is_reported(voc_copy, tmp_path):
    victim = read_list(str(voc_copy / "ImageSets/Segmentation/val.txt"))[0]
    os.remove(voc_copy / "JPEGImages" / f"{victim}.jpg")
    with pytest.raises(UserError, match=f"{victim}.jpg"):
        prepare_voc(voc_layout(str(voc_copy)), str(tmp_path / "l"), log=lambda *_: None)


def test_cli_writes_lists_and_bad_flags_exit_2_with_one_line(voc_copy, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "datasets.prepare", *a], cwd=REPO,
                                    capture_output=True, text=True)
    ok = run("--dataset", "voc", "--data_folder", str(voc_copy), "--list_folder", str(tmp_path / "l"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "l" / "train_aug.txt").is_file() and "train_aug" in ok.stdout
    bad = run("--dataset", "voc", "--data_folder", str(tmp_path / "nowhere"))
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--data_folder" in bad.stderr
    assert "Traceback" not in bad.stderr
