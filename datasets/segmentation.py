"""Training and evaluation datasets for VOC and COCO (docs/data.md#loading-rules).

Both read through :mod:`datasets.readers`, so real and synthetic data, single-channel and palette
masks, grayscale and RGB images take the same path.
"""
import os
from typing import Dict

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.errors import UserError

from .layout import DatasetLayout
from .lists import labels_path, load_labels, read_list
from .readers import read_image, read_mask
from utils.input_stats import PAPER_STATS, InputStats

from .transforms import TrainAugmentation


def _load_split(layout: DatasetLayout, list_folder: str, split: str, need_masks: bool,
                need_labels: bool):
    """Ids of ``split`` and their labels, after checking every listed file exists."""
    list_path = os.path.join(list_folder, split + ".txt")
    ids = read_list(list_path)
    if not ids:
        raise UserError(f"split list {list_path} is empty")
    for n, img_id in enumerate(ids, 1):
        path = layout.image_path(split, img_id)
        if not os.path.isfile(path):
            raise UserError(f"{list_path} line {n}: id {img_id} has no image at {path}")
        if need_masks and layout.mask_path(split, img_id) is None:
            raise UserError(f"{list_path} line {n}: id {img_id} has no mask under {layout.mask_root}")
    labels: Dict[str, np.ndarray] = {}
    if need_labels:
        all_labels = load_labels(list_folder)
        k = layout.num_classes - 1
        for n, img_id in enumerate(ids, 1):
            if img_id not in all_labels:
                raise UserError(f"{list_path} line {n}: id {img_id} has no entry in "
                                f"{labels_path(list_folder)}; re-run "
                                "`python -m datasets.prepare`")
            vec = np.asarray(all_labels[img_id], dtype=np.float32).reshape(-1)
            if vec.shape[0] != k:
                raise UserError(f"label of {img_id} has {vec.shape[0]} classes, expected {k} for "
                                f"{layout.name}; the list folder {list_folder} belongs to another dataset")
            labels[img_id] = vec
    return ids, labels


class TrainDataset(Dataset):
    """Augmented training crops with image-level labels.

    Item: ``(id, image float32 (3, crop, crop), label float32 (K,), img_box int16 (4,))``.
    """

    def __init__(self, layout: DatasetLayout, list_folder: str, split: str, augmentation: TrainAugmentation):
        self.layout, self.split = layout, split
        self.ids, self.labels = _load_split(layout, list_folder, split, need_masks=False,
                                            need_labels=True)
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        img_id = self.ids[index]
        image, box = self.augmentation(read_image(self.layout.image_path(self.split, img_id)))
        return img_id, image, torch.from_numpy(self.labels[img_id]), box


class EvalDataset(Dataset):
    """Un-augmented images at their own size for validation and testing.

    Item: ``(id, image float32 (3, H, W) normalised, mask uint8 (H, W), label float32 (K,))``;
    images are normalised with ``stats``, the encoder's input statistics (the paper's ImageNet
    constants by default). Without masks (``with_masks=False``, e.g. the VOC test split) the mask is an empty
    ``(0, 0)`` tensor; without labels the label vector is all zeros.
    """

    def __init__(self, layout: DatasetLayout, list_folder: str, split: str = "val",
                 with_masks: bool = True, with_labels: bool = True, stats: InputStats = PAPER_STATS):
        self.layout, self.split, self.stats = layout, split, stats
        self.with_masks, self.with_labels = with_masks, with_labels
        self.ids, self.labels = _load_split(layout, list_folder, split, need_masks=with_masks,
                                            need_labels=with_labels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        img_id = self.ids[index]
        rgb = read_image(self.layout.image_path(self.split, img_id))
        image = self.stats.normalize_pixels(rgb)
        if self.with_masks:
            mask = read_mask(self.layout.mask_path(self.split, img_id), self.layout.num_classes)
            if mask.shape != rgb.shape[:2]:
                raise UserError(f"mask of {img_id} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                f"is {rgb.shape[1]}x{rgb.shape[0]}; the mask does not belong to it")
            mask = torch.from_numpy(mask)
        else:
            mask = torch.empty((0, 0), dtype=torch.uint8)
        k = self.layout.num_classes - 1
        label = torch.from_numpy(self.labels[img_id]) if self.with_labels else torch.zeros(k)
        return img_id, image, mask, label

    def raw_image(self, index: int) -> np.ndarray:
        """The uint8 RGB image of item ``index`` (for CRF and visualisation)."""
        return read_image(self.layout.image_path(self.split, self.ids[index]))
