"""Split lists and image-level labels: the files every script reads, and deriving them from the
dataset where they are missing (docs/data.md#split-lists-and-image-level-labels).

A list folder holds one ``<split>.txt`` per split (sorted ids, one per line) and
``cls_labels.npz``: arrays ``names`` (ids) and ``labels`` (float32, one row of the K foreground
classes per id), read without pickle. A list folder of the original code
(``cls_labels_onehot.npy``, a pickled dict) is used as it is: its pickle is walked by
:func:`utils.pickle_scan.scan_labels` (the walk checkpoints go through, with the rules of a labels
file) before anything is built. Lists and both labels formats are read within budgets
(docs/data.md#untrusted-files).

Deriving (:func:`prepare_voc`, :func:`prepare_coco`; :func:`ensure_lists` runs them when a file
is missing, ``python -m datasets.prepare`` on request) writes only the files a list folder lacks:
one there is the user's and stays byte for byte.
VOC: ``train_aug`` = every mask in SegmentationClassAug/ not in ImageSets/Segmentation/val.txt;
``val``/``train``/``test`` = ImageSets/Segmentation/*.txt. Labels come from Annotations/<id>.xml
when it exists (every <name> that is a class name: this reproduces the original's labels) and
from the mask otherwise; the number of images on which the two sources disagree is reported.
COCO: ``train``/``val`` = masks in train2014/ and val2014/ with at least one object, labels from
the masks, ``val_part`` = the first 5,000 ids of ``val``.
Training ids without any foreground class are dropped (the dynamic threshold needs one).
"""
import io
import os
import pickle
import zipfile
from xml.parsers import expat
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

from utils.errors import Refused, UserError
from utils.pickle_scan import NUMPY_RECONSTRUCT, check_pickle_memo, scan_labels
from utils.safe_io import check_id, check_zip, id_problem, probe_writable, write_atomically

from .classes import VOC_CLASSES
from .layout import DatasetLayout
from .readers import read_mask

LABELS_FILE = "cls_labels.npz"                  # written by this project, no pickle
ORIGINAL_LABELS_FILE = "cls_labels_onehot.npy"  # the original's pickled dict, read safely
MAX_LABELS_BYTES = 256 << 20   # COCO's labels are about 50-90 MiB in the original's format
MAX_LABEL_CLASSES = 1024       # a label vector has 20 (VOC) or 80 (COCO) values
MAX_LABEL_ENTRIES = 2_000_000  # ids in one labels file (COCO 2014 has 123,287 images)
MAX_LABEL_ARRAY_BYTES = MAX_LABEL_CLASSES * 16   # one label vector of at most 16-byte numbers
MAX_LABEL_MEMO = 1 << 20       # memo entries of the original's pickle: 7 per id, 863,029 for COCO's
MAX_LIST_BYTES = 16 << 20      # a split list of COCO's 82,783 training ids is 2.3 MiB
MAX_LIST_IDS = 500_000         # COCO 2014 has 123,287 images in all
MAX_LIST_LINE = 4096           # an id with its optional second column
COCO_VAL_PART = 5000

# ---------------------------------------------------------------- list and label files
def read_list(path: str) -> List[str]:
    """Ids of a split list (one per line; blank lines and a missing final newline are fine; text
    after the first space is ignored). Every id must be a bare file name: an absolute path, a
    ``..`` or a path separator (an id that would read or write outside its folder) is refused."""
    if not os.path.isfile(path):
        raise UserError(f"split list {path} does not exist; run `python -m datasets.prepare` or "
                        "pass a --list_folder that holds it")
    if os.path.getsize(path) > MAX_LIST_BYTES:
        raise UserError(f"refused split list {path}: {os.path.getsize(path) >> 20} MiB, more than "
                        f"the {MAX_LIST_BYTES >> 20} MiB a list of ids needs; replace it")
    ids = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(iter(lambda: f.readline(MAX_LIST_LINE + 1), ""), 1):
                if len(line) > MAX_LIST_LINE:
                    raise UserError(f"refused split list {path}: line {n} is longer than "
                                    f"{MAX_LIST_LINE} characters; a list holds one image id a line")
                if line.strip():
                    ids.append(check_id(line.split()[0], f"{path} line {n}"))
                    if len(ids) > MAX_LIST_IDS:
                        raise UserError(f"refused split list {path}: more than {MAX_LIST_IDS} ids, "
                                        "more than any dataset's split holds; replace it")
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"cannot read split list {path} ({exc}); a list is a UTF-8 text file of "
                        "ids, one per line") from None
    return ids


def write_list(path: str, ids: Iterable[str]) -> None:
    """Write a split list through a private temporary file (never through a planted link)."""
    write_atomically(path, lambda f: f.writelines(i + "\n" for i in ids))


def labels_path(list_folder: str) -> str:
    """The image-level labels file of ``list_folder``: this project's ``cls_labels.npz`` where it
    exists, else the original's ``cls_labels_onehot.npy`` where that exists, else the former (the
    name a new file gets)."""
    own, original = (os.path.join(list_folder, n) for n in (LABELS_FILE, ORIGINAL_LABELS_FILE))
    return original if not os.path.isfile(own) and os.path.isfile(original) else own


LABELS_FIX = "; delete it and run `python -m datasets.prepare` to derive the labels from the dataset"


def load_labels(list_folder: str) -> Dict[str, np.ndarray]:
    """Image-level labels of a list folder: id -> float32 ``(K,)``. Neither format can run code
    or exceed its budget (docs/data.md#untrusted-files): ``cls_labels.npz`` is read without
    pickle after its records and array headers are checked, the original's pickled
    ``cls_labels_onehot.npy`` once :func:`utils.pickle_scan.scan_labels` has walked its pickle
    (:func:`_read_original_labels`)."""
    path = labels_path(list_folder)
    if not os.path.isfile(path):
        raise UserError(f"image-level labels {path} do not exist; run `python -m datasets.prepare`")
    if os.path.getsize(path) > MAX_LABELS_BYTES:
        raise UserError(f"refused image-level labels {path}: {os.path.getsize(path) >> 20} MiB, more "
                        f"than the {MAX_LABELS_BYTES >> 20} MiB any dataset's labels need{LABELS_FIX}")
    read = _read_original_labels if path.endswith(".npy") else _read_own_labels
    try:
        labels = read(path)
    except UserError:
        raise
    except Refused as exc:
        raise UserError(f"refused image-level labels {path}: it holds {exc}{LABELS_FIX}") from None
    except Exception as exc:  # any other failure is a damaged file
        raise UserError(f"cannot read image-level labels {path} ({type(exc).__name__}: "
                        f"{str(exc)[:200]}){LABELS_FIX}") from None
    if not isinstance(labels, dict):
        raise UserError(f"refused image-level labels {path}: it holds a {type(labels).__name__}, "
                        f"not a dict of id -> label vector{LABELS_FIX}")
    if len(labels) > MAX_LABEL_ENTRIES:
        raise UserError(f"refused image-level labels {path}: {len(labels)} entries, more than "
                        f"{MAX_LABEL_ENTRIES}{LABELS_FIX}")
    out = {}
    for k, v in labels.items():   # values are checked as arrays before numpy looks into them
        if not isinstance(k, str) or len(k) > 1024 or not isinstance(v, np.ndarray) or v.ndim != 1 \
                or v.size > MAX_LABEL_CLASSES or v.dtype.kind not in "biuf":
            raise UserError(f"refused image-level labels {path}: entry {str(k)[:80]!r} is not an id "
                            f"with a vector of at most {MAX_LABEL_CLASSES} numbers{LABELS_FIX}")
        out[k] = np.array(v, dtype=np.float32)
    return out


def _read_own_labels(path: str) -> Dict[str, np.ndarray]:
    members = check_zip(path, "image-level labels", MAX_LABELS_BYTES, max_members=2, fix=LABELS_FIX)
    if set(members) != {"names.npy", "labels.npy"}:
        raise Refused(f"records {sorted(members)[:4]}, not names.npy and labels.npy")
    with zipfile.ZipFile(path) as zf:
        for name, kinds in (("names.npy", "US"), ("labels.npy", "biuf")):
            with zf.open(name) as f:
                major, _ = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if major == 1
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = header(f)
                if dtype.kind not in kinds or dtype.hasobject or dtype.fields is not None:
                    raise Refused(f"{name} of dtype {dtype}")
                if len(shape) > 2 or int(np.prod(shape)) * dtype.itemsize > members[name].file_size:
                    raise Refused(f"{name} declaring {shape} x {dtype}, more than its record holds")
    with np.load(path, allow_pickle=False) as f:
        names, matrix = f["names"], f["labels"]
    if names.ndim != 1 or matrix.ndim != 2 or len(names) != len(matrix):
        raise Refused(f"names {names.shape} and labels {matrix.shape} that do not pair up")
    return {str(n): row for n, row in zip(names.tolist(), matrix)}


# what the globals a scanned labels pickle may name (utils.pickle_scan.LABEL_GLOBALS) stand for
_LABEL_OBJECTS = {**dict.fromkeys(NUMPY_RECONSTRUCT, _reconstruct),
                  "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}


class _LabelUnpickler(pickle.Unpickler):
    """Builds a labels pickle that :func:`utils.pickle_scan.scan_labels` has passed: its globals
    are names of :data:`utils.pickle_scan.LABEL_GLOBALS`, each resolved to its numpy object (both
    module names of ``_reconstruct`` to the one of the numpy installed)."""

    def find_class(self, module, name):
        return _LABEL_OBJECTS[f"{module}.{name}"]


def _read_original_labels(path: str) -> Dict[str, np.ndarray]:
    """The object pickled in an original-format labels file (a 0-d object array, unwrapped): its
    pickle is checked by :func:`utils.pickle_scan.check_pickle_memo` (a fast pass over its memo
    and what it builds) and :func:`utils.pickle_scan.scan_labels` (what its objects are) before it
    is built; :func:`load_labels` checks what it is."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(f)
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"a {dtype} array of shape {shape}, not a pickled dict")
        data = f.read()
    check_pickle_memo(data, MAX_LABEL_MEMO)
    try:
        scan_labels(data, MAX_LABELS_BYTES, MAX_LABEL_MEMO, MAX_LABEL_ARRAY_BYTES, MAX_LABEL_ENTRIES)
    except Refused as exc:
        raise UserError(f"refused image-level labels {path}: {exc}; such a file could run code or "
                        "take the machine's memory when loaded. Delete it and run `python -m "
                        "datasets.prepare` to derive the labels from the dataset") from None
    obj = _LabelUnpickler(io.BytesIO(data)).load()
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    return obj


def save_labels(path: str, labels: Dict[str, np.ndarray]) -> None:
    """Write ``cls_labels.npz`` (arrays ``names`` and ``labels``, no pickle), atomically and
    never through a planted link."""
    names = sorted(labels)
    matrix = np.stack([np.asarray(labels[n], np.float32).reshape(-1) for n in names]) if names \
        else np.zeros((0, 0), np.float32)
    write_atomically(path, lambda f: np.savez(f, names=np.array(names, dtype=str), labels=matrix),
                     binary=True)


MAX_XML_BYTES = 1 << 20   # a VOC annotation is about 1 KB


class _RefusedXML(Exception):
    pass


def xml_names(xml_path: str) -> List[str]:
    """Texts of every ``<name>`` element of an XML file, parsed without entity expansion: a file
    that declares a DTD or entities (none of VOC's does; it is how XML bombs and external-entity
    reads work) or that is larger than any annotation is refused in one line."""
    try:
        with open(xml_path, "rb") as f:
            data = f.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read annotation {xml_path} ({exc}); replace or delete it") from None
    if len(data) > MAX_XML_BYTES:
        raise UserError(f"refused annotation {xml_path}: larger than {MAX_XML_BYTES >> 20} MiB, "
                        "not a VOC annotation; replace or delete it")
    names, text = [], None

    def start(tag, attrs):
        nonlocal text
        if tag == "name":
            text = []

    def end(tag):
        nonlocal text
        if tag == "name" and text is not None:
            names.append("".join(text))
            text = None

    def chars(data):
        if text is not None:
            text.append(data)

    def refuse(*_):
        raise _RefusedXML()

    parser = expat.ParserCreate()
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except _RefusedXML:
        raise UserError(f"refused annotation {xml_path}: it declares a DTD or entities, which VOC "
                        "annotations never do (entity expansion can exhaust memory or read other "
                        "files); replace or delete it") from None
    except expat.ExpatError as exc:
        raise UserError(f"cannot parse annotation {xml_path} ({exc}); replace or delete it") from None
    return names


def voc_xml_labels(xml_path: str) -> np.ndarray:
    """Labels from a VOC annotation: every ``<name>`` whose text is one of the 20 classes.

    Part names (head, hand, foot) are not class names and are ignored; difficult and truncated
    objects count. Returns float32 (20,).
    """
    label = np.zeros(len(VOC_CLASSES) - 1, dtype=np.float32)
    for name in xml_names(xml_path):
        name = name.strip()
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
    stems = sorted(f[: -len(ext)] for f in os.listdir(folder) if f.endswith(ext))
    for stem in stems:
        if id_problem(stem) is not None:
            raise UserError(f"{os.path.join(folder, stem + ext)}: the name {id_problem(stem)}; "
                            "rename or remove the file")
    return stems


def _check_images(layout: DatasetLayout, split: str, ids: Sequence[str]) -> None:
    missing = [i for i in ids if not os.path.isfile(layout.image_path(split, i))]
    if missing:
        raise UserError(f"{len(missing)} ids of split '{split}' have a mask but no image, e.g. "
                        f"{layout.image_path(split, missing[0])}; complete the image folder")


def _make_list_folder(list_folder: str) -> None:
    try:
        os.makedirs(list_folder, exist_ok=True)
    except OSError:
        writable = False
    else:
        writable = probe_writable(list_folder)
    if not writable:
        raise UserError(f"cannot write split lists to {list_folder}; pass --list_folder with a "
                        "writable folder")


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
    existing = labels_path(list_folder)
    todo = {p: ids for p, ids in targets.items() if overwrite or not os.path.exists(p)}
    write_labels = overwrite or not os.path.exists(existing)
    if not todo and not write_labels:
        return
    for path in [*todo, *([os.path.join(list_folder, LABELS_FILE)] if write_labels else [])]:
        if os.path.islink(path):   # checked for all before the first write
            raise UserError(f"refused to write {path}: it is a symbolic link (to "
                            f"{os.readlink(path)!r}) where a derived file goes; the project never "
                            "writes through links: remove it or pass another --list_folder")
    _make_list_folder(list_folder)
    for path, ids in todo.items():
        write_list(path, ids)
    if write_labels:
        save_labels(os.path.join(list_folder, LABELS_FILE), labels)
    kept = [os.path.basename(p) for p in targets if p not in todo] + ([] if write_labels else [os.path.basename(existing)])
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
    needed.append(labels_path(list_folder))
    if all(os.path.isfile(p) for p in needed):
        _warn_if_labels_disagree(layout, list_folder, splits, log)
        return list_folder
    log(f"split lists missing in {list_folder}; deriving them from the dataset")
    prepare = prepare_voc if layout.kind == "voc" else prepare_coco
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
            log(f"warning: {labels_path(list_folder)} disagrees with the masks on "
                f"{len(differ)} of the first {len(masks)} ids of {split} (e.g. {differ[0]}); labels "
                "from Annotations XML may list objects a mask lacks, other differences mean the "
                "list folder belongs to another copy of the data")
