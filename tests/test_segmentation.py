"""Training and evaluation datasets read real-layout data through one path and fail clearly."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.layout import coco_layout, voc_layout
from datasets.lists import ensure_lists, read_list
from datasets.readers import read_mask
from datasets.segmentation import EvalDataset, TrainDataset
from datasets.transforms import TrainAugmentation
from utils.errors import UserError


@pytest.fixture
def voc(voc_copy):
    layout = voc_layout(str(voc_copy))
    return layout, ensure_lists(layout, None, ["train_aug", "val"], log=lambda *_: None)


def test_train_items_have_crop_label_and_box(voc):
    layout, lists = voc
    ds = TrainDataset(layout, lists, "train_aug", TrainAugmentation(64, (0.5, 2.0)))
    img_id, image, label, box = ds[0]
    assert img_id == read_list(os.path.join(lists, "train_aug.txt"))[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.shape == (20,) and label.sum() >= 1
    assert box.dtype == torch.int16 and box.shape == (4,)


def test_train_loader_batches_with_workers(voc):
    layout, lists = voc
    ds = TrainDataset(layout, lists, "train_aug", TrainAugmentation(48, (0.5, 2.0)))
    ids, images, labels, boxes = next(iter(DataLoader(ds, batch_size=3, num_workers=2)))
    assert len(ids) == 3 and images.shape == (3, 3, 48, 48)
    assert labels.shape == (3, 20) and boxes.shape == (3, 4) and boxes.dtype == torch.int16


def test_eval_items_are_full_size_normalised_with_index_masks(voc):
    layout, lists = voc
    ds = EvalDataset(layout, lists, "val")
    img_id, image, mask, label = ds[0]
    raw = ds.raw_image(0)
    assert image.shape == (3, *raw.shape[:2]) and mask.shape == raw.shape[:2]
    assert mask.dtype == torch.uint8
    mean = torch.tensor([123.675, 116.28, 103.53])
    std = torch.tensor([58.395, 57.12, 57.375])
    expected = (torch.from_numpy(raw[0, 0]).float() - mean) / std
    torch.testing.assert_close(image[:, 0, 0], expected)
    present = set(torch.unique(mask).tolist()) - {0, 255}
    assert present == {int(c) + 1 for c in torch.nonzero(label).flatten()}


def test_palette_masks_of_segmentationclass_read_as_indices(voc):
    layout, lists = voc
    ds = EvalDataset(layout, lists, "val")
    img_id = ds.ids[0]
    aug = os.path.join(layout.mask_root, "SegmentationClassAug", img_id + ".png")
    expected = read_mask(aug, 21)
    os.remove(aug)  # now only VOC's palette PNG remains
    palette_path = os.path.join(layout.mask_root, "SegmentationClass", img_id + ".png")
    assert Image.open(palette_path).mode == "P"
    np.testing.assert_array_equal(ds[0][2].numpy(), expected)


def test_test_split_needs_no_masks_or_labels(voc_copy):
    layout = voc_layout(str(voc_copy))
    lists = ensure_lists(layout, None, ["test"], log=lambda *_: None)
    ds = EvalDataset(layout, lists, "test", with_masks=False, with_labels=False)
    _, image, mask, label = ds[0]
    assert image.dim() == 3 and mask.numel() == 0 and label.shape == (20,) and label.sum() == 0


def test_coco_datasets_use_80_class_labels(coco_copy):
    layout = coco_layout(str(coco_copy / "JPEGImages"))
    lists = ensure_lists(layout, None, ["train", "val_part"], log=lambda *_: None)
    train = TrainDataset(layout, lists, "train", TrainAugmentation(32, (0.5, 2.0), coco_flip=True))
    assert train[0][2].shape == (80,)
    _, image, mask, label = EvalDataset(layout, lists, "val_part")[0]
    assert label.shape == (80,) and mask.shape == image.shape[1:]


def test_list_entry_without_image_names_the_list_line(voc):
    layout, lists = voc
    victim = read_list(os.path.join(lists, "train_aug.txt"))[2]
    os.remove(layout.image_path("train_aug", victim))
    with pytest.raises(UserError, match=rf"train_aug.txt line 3: id {victim} has no image"):
        TrainDataset(layout, lists, "train_aug", TrainAugmentation(32, (0.5, 2.0)))


def test_list_entry_without_mask_is_refused_for_evaluation(voc):
    layout, lists = voc
    victim = read_list(os.path.join(lists, "val.txt"))[0]
    for sub in ("SegmentationClassAug", "SegmentationClass"):
        path = os.path.join(layout.mask_root, sub, victim + ".png")
        if os.path.exists(path):
            os.remove(path)
    with pytest.raises(UserError, match=f"id {victim} has no mask"):
        EvalDataset(layout, lists, "val")


def test_id_missing_from_labels_is_refused(voc):
    layout, lists = voc
    with open(os.path.join(lists, "val.txt"), "a") as f:
        f.write("2012_999999\n")
    Image.new("RGB", (8, 8)).save(layout.image_path("val", "2012_999999"))
    Image.new("L", (8, 8)).save(os.path.join(layout.mask_root, "SegmentationClassAug", "2012_999999.png"))
    with pytest.raises(UserError, match="2012_999999 has no entry in .*cls_labels.npz"):
        EvalDataset(layout, lists, "val")


def test_corrupt_image_and_bad_mask_fail_when_read(voc):
    layout, lists = voc
    ds = EvalDataset(layout, lists, "val")
    path = layout.image_path("val", ds.ids[0])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:200])
    with pytest.raises(UserError, match="corrupt or truncated"):
        ds[0]
    mask_path = layout.mask_path("val", ds.ids[1])
    m = np.array(Image.open(mask_path))
    m[0, 0] = 99
    Image.fromarray(m, mode="L").save(mask_path)
    with pytest.raises(UserError, match=r"values \[99\] outside the class range"):
        ds[1]
