"""Derive split lists and image-level labels from the dataset itself.

    python -m datasets.prepare --dataset voc --data_folder VOC2012 [--list_folder DIR]
    python -m datasets.prepare --dataset coco --img_folder COCO --label_folder COCO/SegmentationClass

Writes to ``--list_folder`` (default: ``<data folder>_lists`` next to the data), where a file of
that name is not there yet (``--overwrite`` replaces them), one ``<split>.txt`` per split (sorted ids, one per line) and ``cls_labels_onehot.npy``: a pickled
dict id -> float32 vector of the K foreground classes, the format the original code ships, so
its files can be used instead.

VOC: ``train_aug`` = every mask in SegmentationClassAug/ not in ImageSets/Segmentation/val.txt;
``val``/``train``/``test`` = ImageSets/Segmentation/*.txt. Labels come from Annotations/<id>.xml
when it exists (every <name> that is a class name: this reproduces the original's labels) and
from the mask otherwise; the number of images on which the two sources disagree is reported.
COCO: ``train``/``val`` = masks in train2014/ and val2014/ with at least one object, labels from
the masks, ``val_part`` = the first 5,000 ids of ``val``.
Training ids without any foreground class are dropped (the dynamic threshold needs one).
"""
import argparse
import os
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from utils.errors import UserError, exit_on_user_error

from .classes import VOC_CLASSES
from .layout import DatasetLayout, coco_layout, voc_layout
from .readers import read_mask

LABELS_FILE = "cls_labels_onehot.npy"
COCO_VAL_PART = 5000
SPLITS = {"voc": ("train_aug", "val", "train", "test"), "coco": ("train", "val", "val_part")}


# ---------------------------------------------------------------- list and label files
def read_list(path: str) -> List[str]:
    """Ids of a split list (one per line; blank lines and a missing final newline are fine)."""
    if not os.path.isfile(path):
        raise UserError(f"split list {path} does not exist; run `python -m datasets.prepare` or "
                        "pass a --list_folder that holds it")
    with open(path) as f:
        return [line.strip().split()[0] for line in f if line.strip()]


def write_list(path: str, ids: Iterable[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(i + "\n" for i in ids)
    os.replace(tmp, path)


def load_labels(list_folder: str) -> Dict[str, np.ndarray]:
    path = os.path.join(list_folder, LABELS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"image-level labels {path} do not exist; run `python -m datasets.prepare`")
    try:
        labels = np.load(path, allow_pickle=True).item()
    except Exception as exc:  # any unpickling failure is a bad file
        raise UserError(f"cannot read image-level labels {path} ({exc}); delete it and run "
                        "`python -m datasets.prepare` again") from None
    if not isinstance(labels, dict):
        raise UserError(f"{path} is not a dict of id -> label vector; delete it and re-run "
                        "`python -m datasets.prepare`")
    return labels


def save_labels(path: str, labels: Dict[str, np.ndarray]) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, labels, allow_pickle=True)
    os.replace(tmp, path)


def voc_xml_labels(xml_path: str) -> np.ndarray:
    """Labels from a VOC annotation: every ``<name>`` whose text is one of the 20 classes.

    Part names (head, hand, foot) are not class names and are ignored; difficult and truncated
    objects count. Returns float32 (20,).
    """
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise UserError(f"cannot parse annotation {xml_path} ({exc}); replace or delete it") from None
    label = np.zeros(len(VOC_CLASSES) - 1, dtype=np.float32)
    for node in root.iter("name"):
        name = (node.text or "").strip()
        if name in VOC_CLASSES[1:]:
            label[VOC_CLASSES.index(name) - 1] = 1.0
    return label


def mask_labels(mask_path: str, num_classes: int) -> np.ndarray:
    """Labels from an index mask: classes present other than background and 255. float32 (K,)."""
    counts = np.bincount(read_mask(mask_path, num_classes).ravel(), minlength=256)
    return (counts[1:num_classes] > 0).astype(np.float32)


def _mask_labels_job(args):
    return mask_labels(*args)


def _labels_from_masks(paths: Sequence[str], num_classes: int, workers: int) -> List[np.ndarray]:
    jobs = [(p, num_classes) for p in paths]
    if workers <= 1 or len(jobs) < 256:
        return [_mask_labels_job(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_mask_labels_job, jobs, chunksize=64))


def _stems(folder: str, ext: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f[: -len(ext)] for f in os.listdir(folder) if f.endswith(ext))


def _check_images(layout: DatasetLayout, split: str, ids: Sequence[str]) -> None:
    missing = [i for i in ids if not os.path.isfile(layout.image_path(split, i))]
    if missing:
        raise UserError(f"{len(missing)} ids of split '{split}' have a mask but no image, e.g. "
                        f"{layout.image_path(split, missing[0])}; complete the image folder")


def _make_list_folder(list_folder: str) -> None:
    try:
        os.makedirs(list_folder, exist_ok=True)
        probe = os.path.join(list_folder, ".write_test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError:
        raise UserError(f"cannot write split lists to {list_folder}; pass --list_folder with a "
                        "writable folder") from None


def _write_derived(list_folder: str, splits: Dict[str, List[str]], labels: Dict[str, np.ndarray],
                   requested: Sequence[str], overwrite: bool, log, source: str) -> None:
    """Write the derived lists and labels that ``list_folder`` does not hold yet (every one with
    ``overwrite``); a file already there is the user's and stays byte for byte. A requested split
    that is neither in the folder nor derivable is refused before anything is written."""
    unknown = [s for s in requested if s not in splits
               and not os.path.isfile(os.path.join(list_folder, s + ".txt"))]
    if unknown:
        raise UserError(f"split '{unknown[0]}' does not exist: {source} has the splits "
                        f"{', '.join(sorted(splits))} (or put {unknown[0]}.txt in {list_folder})")
    targets = {os.path.join(list_folder, name + ".txt"): ids for name, ids in splits.items()}
    labels_path = os.path.join(list_folder, LABELS_FILE)
    todo = {p: ids for p, ids in targets.items() if overwrite or not os.path.exists(p)}
    write_labels = overwrite or not os.path.exists(labels_path)
    if not todo and not write_labels:
        return
    _make_list_folder(list_folder)
    for path, ids in todo.items():
        write_list(path, ids)
    if write_labels:
        save_labels(labels_path, labels)
    kept = [os.path.basename(p) for p in targets if p not in todo] + ([] if write_labels else [LABELS_FILE])
    log(f"wrote {', '.join(sorted(os.path.basename(p) for p in todo) + ([LABELS_FILE] if write_labels else []))} "
        f"to {list_folder}" + (f"; kept the existing {', '.join(sorted(kept))}" if kept else ""))


# ---------------------------------------------------------------- VOC
def prepare_voc(layout: DatasetLayout, list_folder: str, workers: int = 2, log=print,
                requested: Sequence[str] = (), overwrite: bool = False) -> dict:
    """Derive VOC split lists and labels and write the ones ``list_folder`` lacks (all of them
    with ``overwrite``); a ``requested`` split that is neither there nor derivable is refused
    before anything is written. Returns a summary dict (counts per split, label stats)."""
    root = layout.image_root
    sets = os.path.join(root, "ImageSets", "Segmentation")
    val_path = os.path.join(sets, "val.txt")
    if not os.path.isfile(val_path):
        raise UserError(f"{val_path} does not exist; --data_folder must be VOC2012 with "
                        "ImageSets/Segmentation/val.txt")
    splits = {"val": sorted(set(read_list(val_path)))}
    for name in ("train", "test"):
        path = os.path.join(sets, name + ".txt")
        if os.path.isfile(path):
            splits[name] = sorted(set(read_list(path)))
    aug_ids = _stems(os.path.join(root, "SegmentationClassAug"), ".png")
    if aug_ids:
        val_set = set(splits["val"])
        splits["train_aug"] = [i for i in aug_ids if i not in val_set]
    elif "train" in splits:
        log(f"warning: {root}/SegmentationClassAug/ is missing or empty; train_aug falls back to "
            "ImageSets/Segmentation/train.txt. Add SBD's SegmentationClassAug for the paper's "
            "10,582 training images.")
        splits["train_aug"] = list(splits["train"])
    else:
        raise UserError(f"{root} has neither SegmentationClassAug/ nor "
                        "ImageSets/Segmentation/train.txt: no training ids can be derived")

    labelled = sorted(set(splits["train_aug"]) | set(splits["val"]) | set(splits.get("train", [])))
    for split in ("train_aug", "val"):
        _check_images(layout, split, splits[split])
    xml_labels, mask_paths = {}, {}
    for i in labelled:
        xml = os.path.join(root, "Annotations", i + ".xml")
        if os.path.isfile(xml):
            xml_labels[i] = voc_xml_labels(xml)
        mask = layout.mask_path("train_aug", i)
        if mask is not None:
            mask_paths[i] = mask
        elif i not in xml_labels:
            raise UserError(f"image {i} has neither Annotations/{i}.xml nor a mask in "
                            f"SegmentationClassAug/ or SegmentationClass/ under {root}")
    mask_ids = sorted(mask_paths)
    from_masks = dict(zip(mask_ids, _labels_from_masks([mask_paths[i] for i in mask_ids],
                                                       layout.num_classes, workers)))
    labels = {i: xml_labels.get(i, from_masks.get(i)) for i in labelled}
    both = [i for i in labelled if i in xml_labels and i in from_masks]
    disagree = [i for i in both if not np.array_equal(xml_labels[i], from_masks[i])]

    empty = [i for i in splits["train_aug"] if labels[i].sum() == 0]
    splits["train_aug"] = [i for i in splits["train_aug"] if labels[i].sum() > 0]
    _write_derived(list_folder, splits, labels, requested, overwrite, log, f"--data_folder {root}")

    summary = {
        "splits": {k: len(v) for k, v in splits.items()},
        "labels_from_xml": sum(i in xml_labels for i in labelled),
        "labels_from_masks": sum(i not in xml_labels for i in labelled),
        "xml_mask_disagreements": len(disagree),
        "dropped_without_foreground": len(empty),
    }
    log(f"VOC splits derived from {root}: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    log(f"labels: {summary['labels_from_xml']} from Annotations XML, "
        f"{summary['labels_from_masks']} from masks; XML and mask labels disagree on "
        f"{len(disagree)} of {len(both)} images" + (f" (e.g. {', '.join(disagree[:3])})" if disagree else ""))
    if empty:
        log(f"dropped {len(empty)} train_aug images without any foreground class (e.g. {empty[0]})")
    return summary


# ---------------------------------------------------------------- COCO
def prepare_coco(layout: DatasetLayout, list_folder: str, workers: int = 2, log=print,
                 requested: Sequence[str] = (), overwrite: bool = False) -> dict:
    """Derive COCO train/val/val_part lists and mask-derived labels and write the ones
    ``list_folder`` lacks (as :func:`prepare_voc`); returns a summary dict."""
    splits, labels, dropped = {}, {}, {}
    for split, sub in (("train", "train2014"), ("val", "val2014")):
        ids = _stems(os.path.join(layout.mask_root, sub), ".png")
        if not ids:
            log(f"note: no masks in {os.path.join(layout.mask_root, sub)}; split '{split}' skipped")
            continue
        _check_images(layout, split, ids)
        paths = [os.path.join(layout.mask_root, sub, i + ".png") for i in ids]
        vecs = _labels_from_masks(paths, layout.num_classes, workers)
        keep = [(i, v) for i, v in zip(ids, vecs) if v.sum() > 0]
        dropped[split] = len(ids) - len(keep)
        splits[split] = [i for i, _ in keep]
        labels.update(keep)
    if not splits:
        raise UserError(f"--label_folder {layout.mask_root} holds no masks in train2014/ or val2014/")
    if "val" in splits:
        splits["val_part"] = splits["val"][:COCO_VAL_PART]
    _write_derived(list_folder, splits, labels, requested, overwrite, log,
                   f"--label_folder {layout.mask_root}")
    summary = {"splits": {k: len(v) for k, v in splits.items()}, "dropped_without_foreground": dropped}
    log(f"COCO splits derived from {layout.mask_root}: "
        + ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
        + "; dropped without objects: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    return summary


# ---------------------------------------------------------------- used by the scripts
def ensure_lists(layout: DatasetLayout, list_folder: Optional[str], splits: Sequence[str],
                 workers: int = 2, log=print) -> str:
    """Return the list folder holding ``<split>.txt`` for ``splits`` and the labels file,
    deriving them from the data first when any is missing."""
    list_folder = list_folder or layout.default_list_folder
    needed = [os.path.join(list_folder, s + ".txt") for s in splits]
    needed.append(os.path.join(list_folder, LABELS_FILE))
    if all(os.path.isfile(p) for p in needed):
        _warn_if_labels_disagree(layout, list_folder, splits, log)
        return list_folder
    log(f"split lists missing in {list_folder}; deriving them from the dataset")
    prepare = prepare_voc if layout.name == "voc" else prepare_coco
    prepare(layout, list_folder, workers=workers, log=log, requested=splits)
    still = [p for p in needed if not os.path.isfile(p)]
    if still:
        raise UserError(f"split list {still[0]} cannot be derived from the dataset; check that "
                        "the split exists in the data or pass a --list_folder that holds it")
    return list_folder


def _warn_if_labels_disagree(layout: DatasetLayout, list_folder: str, splits: Sequence[str], log,
                             sample: int = 20) -> None:
    """Compare the labels file with the masks on the first ``sample`` ids of each split that has
    masks, and say so (one line naming the file) when they differ; the files are left as they are."""
    labels = load_labels(list_folder)
    for split in splits:
        ids = read_list(os.path.join(list_folder, split + ".txt"))[:sample]
        masks = [(i, layout.mask_path(split, i)) for i in ids if i in labels]
        masks = [(i, m) for i, m in masks if m is not None]
        differ = [i for i, m in masks
                  if not np.array_equal(mask_labels(m, layout.num_classes),
                                        np.asarray(labels[i], np.float32).reshape(-1))]
        if differ:
            log(f"warning: {os.path.join(list_folder, LABELS_FILE)} disagrees with the masks on "
                f"{len(differ)} of the first {len(masks)} ids of {split} (e.g. {differ[0]}); labels "
                "from Annotations XML may list objects a mask lacks, other differences mean the "
                "list folder belongs to another copy of the data")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("voc", "coco"), required=True, help="dataset kind")
    p.add_argument("--data_folder", help="VOC: the VOC2012 folder; COCO: alias of --img_folder")
    p.add_argument("--img_folder", help="COCO: folder with train2014/ and val2014/ images")
    p.add_argument("--label_folder", help="COCO: folder with train2014/ and val2014/ index masks "
                   "(default: SegmentationClass inside or next to --img_folder)")
    p.add_argument("--list_folder", help="where to write the lists (default: <data folder>_lists)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes reading masks")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace lists and labels already in --list_folder (they are kept otherwise)")
    return p


@exit_on_user_error
def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.dataset == "voc":
        layout = voc_layout(args.data_folder)
        prepare_voc(layout, args.list_folder or layout.default_list_folder, args.workers,
                    overwrite=args.overwrite)
    else:
        layout = coco_layout(args.img_folder or args.data_folder, args.label_folder)
        prepare_coco(layout, args.list_folder or layout.default_list_folder, args.workers,
                     overwrite=args.overwrite)


if __name__ == "__main__":
    main(sys.argv[1:])
