"""The datasets the scripts know (:data:`DATASETS`) and where their images and masks live on disk
(docs/data.md#pascal-voc-2012--sbd). A dataset has the folder layout, list rules and evaluation rule
of VOC or of COCO (its ``layout``):

VOC:  ``<data_folder>/JPEGImages/<id>.jpg``, masks in ``SegmentationClassAug/<id>.png`` (SBD,
      single channel) or else ``SegmentationClass/<id>.png`` (VOC's own palette PNGs).
COCO: ``<img_folder>/{train2014,val2014}/<id>.jpg`` and
      ``<label_folder>/{train2014,val2014}/<id>.png`` (VOC-style index masks).
"""
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from utils.errors import UserError

from .classes import COCO_CLASSES, VOC_CLASSES, VOC_DISPLAY_NAMES

VOC_MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")


@dataclass(frozen=True)
class Dataset:
    """A dataset the scripts know: its title (and a short one), class names (background first), the
    names result tables print, and ``layout``: ``voc`` or ``coco``, whose folders, list rules,
    loader and evaluation rule it has."""
    title: str
    short_title: str
    classes: Tuple[str, ...]
    display_names: Tuple[str, ...]
    layout: str


DATASETS: Dict[str, Dataset] = {
    "voc": Dataset("PASCAL VOC 2012", "VOC 2012", VOC_CLASSES, VOC_DISPLAY_NAMES, "voc"),
    "coco": Dataset("MS COCO 2014", "COCO 2014", COCO_CLASSES, COCO_CLASSES, "coco"),
}


def layout_kind(dataset: str) -> str:
    """``voc`` or ``coco``: the folder layout and rules of ``dataset``."""
    return DATASETS[dataset].layout


@dataclass(frozen=True)
class DatasetLayout:
    """The files of one dataset of :data:`DATASETS` (``name``)."""

    name: str
    image_root: str
    mask_root: str
    default_list_folder: str

    @property
    def kind(self) -> str:
        """``voc`` or ``coco``: the folder layout and rules."""
        return layout_kind(self.name)

    @property
    def class_names(self) -> Tuple[str, ...]:
        return DATASETS[self.name].classes

    @property
    def display_names(self) -> Tuple[str, ...]:
        """Class names as result tables print them (VOC: bg, table, plant)."""
        return DATASETS[self.name].display_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _coco_subfolder(self, split: str, img_id: str) -> str:
        for sub in ("train2014", "val2014", "test2014"):
            if img_id.startswith(f"COCO_{sub}_"):
                return sub
        return "train2014" if split == "train" else "val2014"

    def image_path(self, split: str, img_id: str) -> str:
        if self.kind == "voc":
            return os.path.join(self.image_root, "JPEGImages", img_id + ".jpg")
        return os.path.join(self.image_root, self._coco_subfolder(split, img_id), img_id + ".jpg")

    def mask_path(self, split: str, img_id: str) -> Optional[str]:
        """Path of the index mask of ``img_id``; None when the dataset has no mask for it."""
        if self.kind == "voc":
            for sub in VOC_MASK_DIRS:
                path = os.path.join(self.mask_root, sub, img_id + ".png")
                if os.path.isfile(path):
                    return path
            return None
        path = os.path.join(self.mask_root, self._coco_subfolder(split, img_id), img_id + ".png")
        return path if os.path.isfile(path) else None


def voc_layout(data_folder: Optional[str], name: str = "voc") -> DatasetLayout:
    """Check that ``data_folder`` looks like ``VOC2012`` and describe it (as dataset ``name``)."""
    if not data_folder:
        raise UserError("--data_folder is required: the VOC2012 folder holding JPEGImages/ and "
                        "SegmentationClassAug/")
    if not os.path.isdir(data_folder):
        raise UserError(f"--data_folder {data_folder} does not exist")
    if not os.path.isdir(os.path.join(data_folder, "JPEGImages")):
        raise UserError(f"--data_folder {data_folder} is not a VOC2012 folder: it has no "
                        "JPEGImages/ (expected VOC2012/ with JPEGImages/, SegmentationClassAug/, "
                        "ImageSets/Segmentation/)")
    folder = os.path.normpath(data_folder)
    return DatasetLayout(name, folder, folder, folder + "_lists")


def coco_layout(img_folder: Optional[str], label_folder: Optional[str] = None, name: str = "coco") -> DatasetLayout:
    """Check the COCO image folder (with train2014/, val2014/) and the mask folder (dataset ``name``).

    Without ``label_folder`` the masks are looked for in ``<img_folder>/SegmentationClass`` and
    ``<img_folder>/../SegmentationClass``.
    """
    if not img_folder:
        raise UserError("--img_folder is required: the COCO folder holding train2014/ and val2014/")
    if not os.path.isdir(img_folder):
        raise UserError(f"--img_folder {img_folder} does not exist")
    if not any(os.path.isdir(os.path.join(img_folder, s)) for s in ("train2014", "val2014")):
        raise UserError(f"--img_folder {img_folder} is not a COCO 2014 image folder: it has neither "
                        "train2014/ nor val2014/")
    img_folder = os.path.normpath(img_folder)
    if label_folder is None:
        candidates = [os.path.join(img_folder, "SegmentationClass"),
                      os.path.join(os.path.dirname(img_folder), "SegmentationClass")]
        label_folder = next((c for c in candidates if os.path.isdir(c)), None)
        if label_folder is None:
            raise UserError(f"no COCO masks found next to --img_folder {img_folder}; pass "
                            "--label_folder (the SegmentationClass folder with train2014/ and "
                            "val2014/ index PNGs)")
    elif not os.path.isdir(label_folder):
        raise UserError(f"--label_folder {label_folder} does not exist")
    if not any(os.path.isdir(os.path.join(label_folder, s)) for s in ("train2014", "val2014")):
        raise UserError(f"--label_folder {label_folder} is not a COCO mask folder: it has neither "
                        "train2014/ nor val2014/")
    label_folder = os.path.normpath(label_folder)
    return DatasetLayout(name, img_folder, label_folder, label_folder + "_lists")


def dataset_layout(name: str, data_folder: Optional[str] = None, img_folder: Optional[str] = None,
                   label_folder: Optional[str] = None,
                   num_classes: Optional[int] = None) -> DatasetLayout:
    """The layout of dataset ``name`` (VOC's layout: ``data_folder``; COCO's: ``img_folder`` /
    ``label_folder``), checking ``--num_classes`` against it when given."""
    layout = (voc_layout(data_folder, name) if layout_kind(name) == "voc"
              else coco_layout(img_folder, label_folder, name))
    if num_classes is not None and num_classes != layout.num_classes:
        raise UserError(f"--num_classes {num_classes} does not match {layout.name} "
                        f"({layout.num_classes} classes)")
    return layout
