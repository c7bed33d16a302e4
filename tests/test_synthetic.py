"""Tests of the synthetic VOC / COCO dataset writer (datasets/synthetic.py) and of the harder
style the tests draw with it (tests/helpers/hard_synthetic.py)."""
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets import synthetic
from datasets.classes import COCO_CLASSES, VOC_CLASSES, voc_colormap
from utils.labels import IGNORE_INDEX
from datasets.synthetic import COCO_INDEX, SYNTHETIC_CLASSES, VOC_INDEX, make_sample, write_coco, write_voc
from tests.helpers import hard_synthetic
from tests.helpers.hard_synthetic import make_hard_sample, write_hard_voc

REPO_ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, N_TEST = 60, 24, 4
N_COCO_TRAIN, N_COCO_VAL = 14, 6
VOC_IDS = {idx for _, idx in VOC_INDEX}
COCO_IDS = {idx for _, idx in COCO_INDEX}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc(tmp_path_factory.mktemp("voc"), N_TRAIN, N_VAL, N_TEST, seed=1)


@pytest.fixture(scope="module")
def hard_voc(tmp_path_factory):
    return write_hard_voc(tmp_path_factory.mktemp("hard_voc"), N_TRAIN, N_VAL, N_TEST, seed=1)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"), N_COCO_TRAIN, N_COCO_VAL, seed=1)


def read_list(voc, name):
    text = (voc / "ImageSets" / "Segmentation" / f"{name}.txt").read_text()
    assert text.endswith("\n")
    return text.splitlines()


def stems(folder, ext):
    return sorted(p.name[: -len(ext) - 1] for p in folder.glob(f"*.{ext}"))


def load_mask(path):
    return np.asarray(Image.open(path))


def labelled_ids(voc):
    return stems(voc / "SegmentationClassAug", "png")


def xml_objects(path):
    root = ET.parse(path).getroot()
    return root, root.findall("object")


# ------------------------------------------------------------------------------- VOC layout
def test_voc_layout_has_every_folder_and_each_id_has_its_files(voc):
    assert voc.name == "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        assert (voc / sub).is_dir(), sub
    train, val, test = read_list(voc, "train"), read_list(voc, "val"), read_list(voc, "test")
    all_ids = stems(voc / "JPEGImages", "jpg")
    assert len(all_ids) == N_TRAIN + N_VAL + N_TEST
    assert all_ids[0] == "2012_000001" and all_ids == [f"2012_{i:06d}" for i in range(1, len(all_ids) + 1)]
    aug = labelled_ids(voc)
    train_aug = sorted(set(aug) - set(val))
    assert len(train_aug) == N_TRAIN and set(val) <= set(aug)
    assert stems(voc / "Annotations", "xml") == aug
    assert stems(voc / "SegmentationClass", "png") == sorted(set(train) | set(val))
    assert set(test).isdisjoint(aug) and len(test) == N_TEST
    assert set(test) | set(aug) == set(all_ids)
    # Derived lists are not written by the generator.
    assert sorted(p.name for p in (voc / "ImageSets" / "Segmentation").iterdir()) == ["test.txt", "train.txt", "val.txt"]


def test_split_lists_are_sorted_and_train_is_about_a_quarter_of_the_training_ids(voc):
    train, val, test = read_list(voc, "train"), read_list(voc, "val"), read_list(voc, "test")
    for ids in (train, val, test):
        assert ids == sorted(ids) and len(ids) == len(set(ids))
    train_aug = set(labelled_ids(voc)) - set(val)
    assert set(train) < train_aug
    assert len(train) == round(N_TRAIN / 4)
    assert set(val).isdisjoint(train) and set(test).isdisjoint(val)


def test_palette_masks_use_the_voc_palette_and_equal_the_index_masks(voc):
    cmap = voc_colormap()
    for p in sorted((voc / "SegmentationClass").glob("*.png")):
        pal_im = Image.open(p)
        assert pal_im.mode == "P"
        palette = np.array(pal_im.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
        assert np.array_equal(palette[: len(palette)], cmap[: len(palette)])
        aug = Image.open(voc / "SegmentationClassAug" / p.name)
        assert aug.mode == "L"
        assert np.array_equal(np.asarray(pal_im), np.asarray(aug))


def test_masks_match_image_sizes_and_hold_only_background_synthetic_classes_or_ignore(voc):
    seen = set()
    for i in labelled_ids(voc):
        mask = load_mask(voc / "SegmentationClassAug" / f"{i}.png")
        image = Image.open(voc / "JPEGImages" / f"{i}.jpg")
        assert mask.dtype == np.uint8 and mask.shape == (image.height, image.width)
        values = set(np.unique(mask).tolist())
        assert values <= {0, IGNORE_INDEX} | VOC_IDS
        seen |= values
    assert VOC_IDS <= seen  # every class occurs somewhere


def test_every_object_is_surrounded_by_an_ignore_band(voc):
    kernel = np.ones((3, 3), np.uint8)
    n_objects = 0
    for i in labelled_ids(voc):
        mask = load_mask(voc / "SegmentationClassAug" / f"{i}.png")
        for c in set(np.unique(mask).tolist()) - {0, IGNORE_INDEX}:
            region = (mask == c).astype(np.uint8)
            ring = (cv2.dilate(region, kernel) > 0) & (region == 0)
            # Class pixels never touch background or another class directly (8-neighbourhood).
            assert np.all(mask[ring] == IGNORE_INDEX), (i, c)
            n_objects += 1
    assert n_objects > N_TRAIN


def test_ignore_band_is_two_to_four_pixels_wide(voc):
    widths = []
    for i in labelled_ids(voc)[:30]:
        mask = load_mask(voc / "SegmentationClassAug" / f"{i}.png")
        band = (mask == IGNORE_INDEX).astype(np.uint8)
        if band.sum() == 0:
            continue
        # Width ~ area / (half the total length of the band's two edges).
        objects = ((mask != 0) & (mask != IGNORE_INDEX)).astype(np.uint8)
        inner_edge = band & cv2.dilate(objects, np.ones((3, 3), np.uint8))
        outer_edge = band & cv2.dilate((mask == 0).astype(np.uint8), np.ones((3, 3), np.uint8))
        length = (inner_edge.sum() + outer_edge.sum()) / 2
        widths.append(band.sum() / max(length, 1))
    assert widths
    assert 2.0 <= float(np.median(widths)) <= 4.0


def test_xml_object_names_match_the_classes_in_the_mask_for_most_images(voc):
    agree = total = 0
    for i in labelled_ids(voc):
        root, objects = xml_objects(voc / "Annotations" / f"{i}.xml")
        assert root.tag == "annotation" and root.findtext("filename") == f"{i}.jpg"
        image = Image.open(voc / "JPEGImages" / f"{i}.jpg")
        assert int(root.findtext("size/width")) == image.width
        assert int(root.findtext("size/height")) == image.height
        assert int(root.findtext("size/depth")) == (1 if image.mode == "L" else 3)
        names = set()
        for obj in objects:
            name = obj.findtext("name")
            assert name in VOC_CLASSES[1:]
            names.add(name)
            box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= box[0] <= box[2] <= image.width and 1 <= box[1] <= box[3] <= image.height
        mask = load_mask(voc / "SegmentationClassAug" / f"{i}.png")
        in_mask = {VOC_CLASSES[c] for c in np.unique(mask) if c not in (0, IGNORE_INDEX)}
        assert in_mask <= names  # nothing in the mask that the XML lacks
        agree += in_mask == names
        total += 1
    assert agree >= 0.9 * total


def test_some_xml_objects_carry_parts_that_are_not_classes(voc):
    parts = 0
    for p in (voc / "Annotations").glob("*.xml"):
        for obj in ET.parse(p).getroot().findall("object"):
            for part in obj.findall("part"):
                assert part.findtext("name") not in VOC_CLASSES
                assert part.find("bndbox") is not None
                parts += 1
    assert parts >= 1


def test_some_images_have_no_object_with_an_all_zero_mask_and_empty_xml(voc):
    empty = []
    for i in labelled_ids(voc):
        mask = load_mask(voc / "SegmentationClassAug" / f"{i}.png")
        _, objects = xml_objects(voc / "Annotations" / f"{i}.xml")
        if not objects:
            assert not mask.any()
            empty.append(i)
    assert 1 <= len(empty) <= 0.1 * len(labelled_ids(voc))


def test_some_jpegs_are_single_channel_grayscale(voc):
    modes = [Image.open(p).mode for p in (voc / "JPEGImages").glob("*.jpg")]
    assert set(modes) == {"RGB", "L"}
    assert 1 <= modes.count("L") <= 0.15 * len(modes)


def test_images_come_in_several_sizes_and_aspect_ratios(voc):
    sizes = [Image.open(p).size for p in (voc / "JPEGImages").glob("*.jpg")]
    assert len(set(sizes)) >= 10
    assert all(96 <= s <= 208 for wh in sizes for s in wh)
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and any(w == h for w, h in sizes)


def _relative_object_sizes(voc):
    rel = []
    for i in labelled_ids(voc):
        root, objects = xml_objects(voc / "Annotations" / f"{i}.xml")
        short = min(int(root.findtext("size/width")), int(root.findtext("size/height")))
        for obj in objects:
            b = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            rel.append(max(b[2] - b[0], b[3] - b[1]) / short)
    return np.array(rel)


def test_objects_are_large_like_voc_objects_so_a_crop_usually_holds_one(voc):
    rel = _relative_object_sizes(voc)
    assert np.median(rel) > 0.45 and (rel > 0.3).mean() > 0.9
    assert rel.max() <= 1.0


def test_hard_style_objects_span_small_to_large_sizes(hard_voc):
    rel = _relative_object_sizes(hard_voc)
    assert rel.max() <= 0.7
    assert rel.min() < 0.3 and (rel > 0.45).mean() > 0.2


# ------------------------------------------------------------------------------- content
def _object_colours(voc):
    """Mean RGB of every class region with > 50 pixels, and its synthetic class id."""
    feats, labels = [], []
    for i in labelled_ids(voc):
        image = Image.open(voc / "JPEGImages" / f"{i}.jpg")
        if image.mode != "RGB":
            continue
        image = np.asarray(image, np.float32)
        mask = load_mask(voc / "SegmentationClassAug" / f"{i}.png")
        for k, (_, idx) in enumerate(VOC_INDEX):
            sel = mask == idx
            if sel.sum() > 50:
                feats.append(image[sel].mean(0))
                labels.append(k)
    return np.array(feats), np.array(labels)


def _nearest_mean_accuracy(feats, labels):
    centroids = np.stack([feats[labels == k].mean(0) for k in range(len(VOC_INDEX))])
    pred = np.argmin(((feats[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return (pred == labels).mean()


def test_hard_style_colour_does_not_identify_the_class(hard_voc):
    feats, labels = _object_colours(hard_voc)
    for k in range(len(VOC_INDEX)):
        if (labels == k).sum() >= 5:  # a class's mean colour varies widely across images
            spread = feats[labels == k].max(0) - feats[labels == k].min(0)
            assert spread.max() > 100
    # A nearest-mean-colour classifier, fitted on these very objects, is near chance (0.2).
    assert _nearest_mean_accuracy(feats, labels) < 0.45


def test_each_class_has_a_colour_family_that_varies_within_the_class(voc):
    feats, labels = _object_colours(voc)
    # colour is a strong cue, as for real categories ...
    assert _nearest_mean_accuracy(feats, labels) > 0.8
    # ... but not one fixed colour: objects of a class differ (shade, surface, lighting)
    for k in range(len(VOC_INDEX)):
        assert feats[labels == k].std(0).max() > 8.0, SYNTHETIC_CLASSES[k]


def test_backgrounds_are_neutral_and_objects_coloured(voc):
    bg_sat, obj_sat = [], []
    for i in labelled_ids(voc)[:30]:
        image = Image.open(voc / "JPEGImages" / f"{i}.jpg")
        if image.mode != "RGB":
            continue
        hsv = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2HSV)
        mask = load_mask(voc / "SegmentationClassAug" / f"{i}.png")
        bg_sat.append(np.median(hsv[..., 1][mask == 0]))
        obj = (mask != 0) & (mask != IGNORE_INDEX)
        if obj.sum() > 50:
            obj_sat.append(np.median(hsv[..., 1][obj]))
    assert np.median(bg_sat) < 40 and np.median(obj_sat) > 60


def test_car_objects_have_dark_wheels_and_a_specular_highlight():
    idx = VOC_INDEX[1][1]
    for s in range(4):
        image, mask, _ = make_sample(np.random.default_rng(40 + s), 200, 200, VOC_INDEX, class_ids=[1])
        brightest_channel = image.max(-1)[mask == idx]
        assert (brightest_channel < 70).mean() > 0.03     # the wheels: dark and colourless
        assert (brightest_channel >= 245).mean() > 0.03   # the highlight


def _single_object_stats(cid, n=8, size=320, style="hard"):
    fills, holes, solidity, texture_std = [], [], [], []
    name, idx = VOC_INDEX[cid]
    sample = {"hard": make_hard_sample, "learnable": make_sample}[style]
    for s in range(n):
        image, mask, objects = sample(np.random.default_rng(100 + s), size, size, VOC_INDEX, class_ids=[cid])
        assert [o[0] for o in objects] == [name]
        region = ((mask == idx) | (mask == IGNORE_INDEX)).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        c = max(contours, key=cv2.contourArea)
        filled = np.zeros_like(region)
        cv2.drawContours(filled, [c], -1, 1, -1)
        w, h = cv2.minAreaRect(c)[1]
        fills.append(cv2.contourArea(c) / (w * h))
        holes.append(1 - region.sum() / filled.sum())
        solidity.append(cv2.contourArea(c) / cv2.contourArea(cv2.convexHull(c)))
        inner = cv2.erode((mask == idx).astype(np.uint8), np.ones((3, 3))) > 0
        texture_std.append(image[inner].astype(np.float32).std(0).mean())
    return np.median(fills), np.median(holes), np.median(solidity), min(texture_std)


def test_hard_style_each_class_has_its_own_shape():
    stats = {SYNTHETIC_CLASSES[c][0]: _single_object_stats(c) for c in range(len(SYNTHETIC_CLASSES))}
    fill, hole, solid = ({k: v[j] for k, v in stats.items()} for j in range(3))
    assert hole["person"] > 0.1 and all(hole[k] < 0.02 for k in hole if k != "person")  # ring
    assert solid["dog"] < 0.75 and all(solid[k] > 0.9 for k in solid if k != "dog")  # star
    assert 0.4 < fill["cat"] < 0.65  # triangle fills half its bounding rectangle
    assert 0.7 < fill["aeroplane"] < 0.85  # ellipse: pi / 4
    assert fill["car"] > 0.88  # rounded rectangle


def test_objects_are_textured_or_shaded_rather_than_flat():
    for c in range(len(SYNTHETIC_CLASSES)):
        assert _single_object_stats(c, n=4)[3] > 12.0, SYNTHETIC_CLASSES[c]
        # the learnable aeroplane is smooth (soft shading only), the others carry a surface
        floor = 3.0 if c == 0 else 12.0
        assert _single_object_stats(c, n=4, style="learnable")[3] > floor, SYNTHETIC_CLASSES[c]


def test_learnable_classes_have_different_shapes():
    stats = {SYNTHETIC_CLASSES[c][0]: _single_object_stats(c, style="learnable") for c in range(5)}
    solid = {k: v[2] for k, v in stats.items()}
    # a standing person is nearly convex, a plane (wings, fin) least; cars (cabin, wheels), cats
    # (ears, tail) and dogs (legs) in between
    others = [v for k, v in solid.items() if k not in ("person", "aeroplane")]
    assert solid["person"] > 0.85 > max(others) and solid["aeroplane"] < 0.6 < min(others)


def test_the_module_draws_only_the_learnable_style_and_takes_no_style_switch(tmp_path, capsys):
    with pytest.raises(TypeError, match="style"):
        make_sample(np.random.default_rng(0), 100, 100, VOC_INDEX, style="easy")
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--out", str(tmp_path), "--style", "hard"])
    assert exc.value.code == 2 and "--style" in capsys.readouterr().err
    assert not hasattr(synthetic, "CLASS_SHAPES") and not hasattr(synthetic, "network_like_probs")


def test_make_sample_returns_documented_shapes_and_respects_arguments():
    rng = np.random.default_rng(0)
    image, mask, objects = make_sample(rng, 200, 300, COCO_INDEX, class_ids=[0, 4])
    assert image.shape == (200, 300, 3) and image.dtype == np.uint8
    assert mask.shape == (200, 300) and mask.dtype == np.uint8
    assert [o[0] for o in objects] == ["airplane", "person"]
    for _, (x0, y0, x1, y1) in objects:
        assert 0 <= x0 <= x1 < 300 and 0 <= y0 <= y1 < 200
    gray, gmask, gobjects = make_sample(rng, 180, 180, VOC_INDEX, grayscale=True)
    assert gray.shape == (180, 180) and 1 <= len(gobjects) <= 3
    _, empty_mask, none = make_sample(rng, 180, 240, VOC_INDEX, num_objects=0)
    assert none == [] and not empty_mask.any()
    a = make_sample(np.random.default_rng(5), 190, 250, VOC_INDEX)
    b = make_sample(np.random.default_rng(5), 190, 250, VOC_INDEX)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ------------------------------------------------------------------------------- determinism
def _all_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = _all_bytes(write_voc(tmp_path / "a", 8, 4, 2, seed=7))
    b = _all_bytes(write_voc(tmp_path / "b", 8, 4, 2, seed=7))
    c = _all_bytes(write_voc(tmp_path / "c", 8, 4, 2, seed=8))
    assert a == b
    jpgs = [k for k in a if k.startswith("JPEGImages")]
    assert all(a[k] != c.get(k) for k in jpgs)
    ca = _all_bytes(write_coco(tmp_path / "a", 4, 2, seed=7))
    cb = _all_bytes(write_coco(tmp_path / "b", 4, 2, seed=7))
    assert ca == cb


def test_write_voc_replaces_a_previous_dataset_without_leftovers(tmp_path):
    write_voc(tmp_path, 12, 4, 2, seed=0)
    voc = write_voc(tmp_path, 4, 2, 1, seed=0)
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 7


# ------------------------------------------------------------------------------- COCO layout
def test_coco_layout_file_names_and_index_range(coco):
    assert coco.name == "coco"
    counts = {}
    seen = set()
    numbers = []
    for split in ("train2014", "val2014"):
        jpgs = sorted((coco / "JPEGImages" / split).glob("*.jpg"))
        pngs = sorted((coco / "SegmentationClass" / split).glob("*.png"))
        counts[split] = len(jpgs)
        assert [p.stem for p in jpgs] == [p.stem for p in pngs]
        for jpg, png in zip(jpgs, pngs):
            prefix = f"COCO_{split}_"
            assert jpg.stem.startswith(prefix) and len(jpg.stem) == len(prefix) + 12
            numbers.append(int(jpg.stem[len(prefix):]))
            m = Image.open(png)
            assert m.mode == "L" and m.size == Image.open(jpg).size
            seen |= set(np.unique(np.asarray(m)).tolist())
    assert counts == {"train2014": N_COCO_TRAIN, "val2014": N_COCO_VAL}
    assert len(set(numbers)) == len(numbers)  # train and val numbers are distinct, like real COCO
    assert seen <= {0, IGNORE_INDEX} | COCO_IDS and seen & COCO_IDS
    assert max(COCO_IDS) <= len(COCO_CLASSES) - 1


def test_class_names_in_both_layouts_are_real_class_names():
    assert len({v for v, _ in SYNTHETIC_CLASSES}) == len({c for _, c in SYNTHETIC_CLASSES}) == 5
    for (v, c), (vn, vi), (cn, ci) in zip(SYNTHETIC_CLASSES, VOC_INDEX, COCO_INDEX):
        assert VOC_CLASSES[vi] == v == vn and COCO_CLASSES[ci] == c == cn
    assert len(set(hard_synthetic.CLASS_SHAPES)) == len(set(hard_synthetic.CLASS_TEXTURES)) == 5


# ------------------------------------------------------------------------------- CLI
def test_cli_writes_a_dataset_and_prints_one_line(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "datasets.synthetic", "--out", str(out), "--num_train", "6", "--num_val", "3",
           "--num_test", "1", "--num_coco_train", "2", "--num_coco_val", "2", "--seed", "4"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    assert len(list((out / "VOC2012" / "JPEGImages").glob("*.jpg"))) == 10
    assert len(list((out / "coco" / "JPEGImages" / "train2014").glob("*.jpg"))) == 2


def test_cli_keeps_an_existing_dataset_unless_overwrite(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--num_train", "4", "--num_val", "2", "--num_test", "1", "--no-coco"]
    assert synthetic.main(args) == 0
    assert not (tmp_path / "coco").exists()
    first = (tmp_path / "VOC2012" / "JPEGImages" / "2012_000001.jpg").read_bytes()
    capsys.readouterr()
    assert synthetic.main(args[:-1] + ["--seed", "9", "--no-coco"]) == 0
    assert "kept" in capsys.readouterr().out
    assert (tmp_path / "VOC2012" / "JPEGImages" / "2012_000001.jpg").read_bytes() == first
    assert synthetic.main(args + ["--seed", "9", "--overwrite"]) == 0
    assert "kept" not in capsys.readouterr().out
    assert (tmp_path / "VOC2012" / "JPEGImages" / "2012_000001.jpg").read_bytes() != first


def test_cli_with_an_unwritable_out_exits_2_with_a_one_line_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cmd = [sys.executable, "-m", "datasets.synthetic", "--out", str(blocker / "data"), "--num_train", "2"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert proc.stdout == ""


def test_fixed_image_size_gives_every_image_and_mask_that_size(tmp_path):
    voc = write_voc(tmp_path / "v", num_train=3, num_val=3, num_test=2, image_size=(75, 100))
    for path in (voc / "JPEGImages").iterdir():
        assert Image.open(path).size == (100, 75)
    for path in (voc / "SegmentationClassAug").iterdir():
        assert Image.open(path).size == (100, 75)
    coco = write_coco(tmp_path / "c", num_train=2, num_val=2, image_size=(64, 48))
    assert {Image.open(p).size for p in (coco / "JPEGImages").rglob("*.jpg")} == {(48, 64)}
    res = subprocess.run([sys.executable, "-m", "datasets.synthetic", "--out", str(tmp_path / "x"),
                          "--image_size", "8", "100", "--no-coco"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip() == "error: --image_size needs both sides >= 32"
