"""The PyTorch dense CRF against pydensecrf: same labels on realistic inputs, batching, chunking,
backend choice, the drivers of both backends, and the evaluation scripts' --crf_backend."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image

import eval_seg_voc
from benchmarks.common import network_like_probs
from datasets.layout import coco_layout, voc_layout
from datasets.lists import ensure_lists
from datasets.segmentation import EvalDataset
from model.network import DualStudentNet
from engine import crf as crf_module
from engine.crf import (PydenseCRFDriver, TorchCRFDriver, crf_driver, dense_crf, job_done, job_inputs,
                        resolve_crf_backend)
from engine.crf_torch import Lattice, dense_crf_batch
from utils.errors import UserError


def dense_crf_torch(image, probs, **kw) -> np.ndarray:
    """The torch CRF of one image: uint8 labels ``(H, W)`` as a numpy array, like :func:`dense_crf`."""
    return dense_crf_batch([image], [probs], **kw)[0].numpy()


def _scenes(root, lists_dir, dataset: str, n: int):
    """``n`` val images of the synthetic set with network-like probabilities and their masks."""
    if dataset == "voc":
        layout = voc_layout(str(root / "VOC2012"))
    else:
        layout = coco_layout(str(root / "coco" / "JPEGImages"), str(root / "coco" / "SegmentationClass"))
    split = "val"
    lists = ensure_lists(layout, str(lists_dir / dataset), [split])
    ds = EvalDataset(layout, lists, split)
    c = 21 if dataset == "voc" else 81
    out = []
    for i in range(min(n, len(ds))):
        _, _, mask, _ = ds[i]
        mask = mask.numpy()
        out.append((ds.raw_image(i), network_like_probs(mask, c, seed=i), mask))
    return out


def _miou(preds, masks, c):
    mat = np.zeros((c, c), np.int64)
    for p, m in zip(preds, masks):
        keep = m < c
        mat += np.bincount(m[keep].astype(np.int64) * c + p[keep], minlength=c * c).reshape(c, c)
    inter = np.diag(mat).astype(np.float64)
    union = mat.sum(0) + mat.sum(1) - inter
    present = mat.sum(1) > 0
    return 100.0 * np.mean(inter[present] / union[present])


@pytest.fixture(scope="module")
def voc_scenes(synthetic_root, tmp_path_factory):
    return _scenes(synthetic_root, tmp_path_factory.mktemp("lists"), "voc", 12)


@pytest.mark.pydensecrf
@pytest.mark.parametrize("dataset,n", [("voc", 12), ("coco", 6)])
def test_labels_agree_with_pydensecrf_on_realistic_inputs(synthetic_root, tmp_path, dataset, n, voc_scenes):
    scenes = voc_scenes if dataset == "voc" else _scenes(synthetic_root, tmp_path, "coco", n)
    same = total = changed = 0
    ref_preds, torch_preds, masks = [], [], []
    for image, probs, mask in scenes:
        ref = dense_crf(image, probs)
        ours = dense_crf_torch(image, probs)
        assert ours.dtype == np.uint8 and ours.shape == ref.shape
        same += int((ours == ref).sum())
        total += ref.size
        changed += int((ref != probs.argmax(0)).sum())
        ref_preds.append(ref.astype(np.int64)), torch_preds.append(ours.astype(np.int64)), masks.append(mask)
    assert same / total >= 0.995, f"{100 * same / total:.3f}% of pixels agree"
    # the inputs are not trivial: the CRF changes a fair share of the argmax
    assert changed / total > 0.01
    c = probs.shape[0]
    assert abs(_miou(torch_preds, masks, c) - _miou(ref_preds, masks, c)) <= 0.1


def test_batched_and_chunked_equal_one_image_at_a_time(voc_scenes):
    images = [s[0] for s in voc_scenes[:3]]
    probs = [s[1] for s in voc_scenes[:3]]
    alone = [dense_crf_torch(im, p) for im, p in zip(images, probs)]
    batched = dense_crf_batch(images, probs)
    chunked = dense_crf_batch(images, probs, class_chunk=5)
    for a, b, c in zip(alone, batched, chunked):
        assert (a == b.numpy()).mean() >= 0.9999
        assert (a == c.numpy()).mean() >= 0.9999


def test_lattice_keeps_images_apart():
    # two images with identical features: filtering a value present only in image 0 leaves image 1 at 0
    feats = torch.rand(50, 5) * 3
    lat = Lattice(torch.cat([feats, feats]), torch.cat([torch.zeros(50, dtype=torch.long),
                                                         torch.ones(50, dtype=torch.long)]))
    values = torch.cat([torch.ones(50, 1), torch.zeros(50, 1)])
    out = lat.filter(values)
    assert out[:50].min() > 0 and out[50:].abs().max() == 0
    alone = Lattice(feats, torch.zeros(50, dtype=torch.long)).filter(torch.ones(50, 1))
    torch.testing.assert_close(out[:50], alone)


def test_lattice_filter_is_a_gaussian_blur():
    # points far apart in feature space do not interact; close ones do, and more when closer
    feats = torch.tensor([[0.0, 0.0], [0.3, 0.0], [1.5, 0.0], [40.0, 40.0]])
    lat = Lattice(feats, torch.zeros(4, dtype=torch.long))
    out = lat.filter(torch.tensor([[1.0], [0.0], [0.0], [0.0]]))[:, 0]
    assert out[0] > out[1] > out[2] >= 0 and out[3] == 0


def test_invalid_inputs_are_refused():
    image = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="probs must be"):
        dense_crf_torch(image, np.ones((3, 5, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        dense_crf_torch(image.astype(np.float32), np.ones((3, 4, 5), np.float32))
    with pytest.raises(TypeError, match="unknown CRF parameters"):
        dense_crf_torch(image, np.ones((3, 4, 5), np.float32), bogus=1)


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(crf_module, "pydensecrf_available", lambda: True)
    assert resolve_crf_backend("auto", torch.device("cpu")) == "pydensecrf"
    assert resolve_crf_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_crf_backend("torch", torch.device("cpu")) == "torch"
    assert resolve_crf_backend("pydensecrf", torch.device("cuda")) == "pydensecrf"
    monkeypatch.setattr(crf_module, "pydensecrf_available", lambda: False)
    assert resolve_crf_backend("auto", torch.device("cpu")) == "torch"
    # installed without it (make install PYDENSECRF=0): naming it is a one-line error
    from utils.errors import UserError
    with pytest.raises(UserError, match="--crf_backend pydensecrf: the pydensecrf module is not installed"):
        resolve_crf_backend("pydensecrf", torch.device("cpu"))


def _refine(driver, image, probs) -> np.ndarray:
    """The labels one driver gives one image handed over as a tensor."""
    got = []
    driver.submit((image, torch.from_numpy(probs), got.append))
    driver.close()
    assert len(got) == 1
    return got[0]


@pytest.mark.pydensecrf
def test_the_factory_gives_each_backend_its_driver(voc_scenes):
    image, probs, _ = voc_scenes[0]
    flags = argparse.Namespace(crf_batch=None, crf_class_chunk=0)
    pyd, tor = crf_driver(flags, "pydensecrf", torch.device("cpu")), crf_driver(flags, "torch", torch.device("cpu"))
    assert isinstance(pyd, PydenseCRFDriver) and isinstance(tor, TorchCRFDriver) and tor.batch == 1
    assert pyd.prepare is job_inputs and pyd.finish is job_done
    a = _refine(pyd, image, probs)
    b = _refine(tor, image, probs)
    np.testing.assert_array_equal(a, dense_crf(image, probs))
    np.testing.assert_array_equal(b, dense_crf_torch(image, probs))


def test_torch_driver_returns_results_in_job_order_and_reports_memory(voc_scenes, monkeypatch):
    jobs = list(range(5))
    stream = TorchCRFDriver("cpu", batch=2, prepare=lambda j: voc_scenes[j][:2],
                            finish=lambda j, label: (j, label), threads=2)
    for j in jobs:
        stream.submit(j)
    out = stream.close()
    assert [j for j, _ in out] == jobs
    for j, label in out:
        np.testing.assert_array_equal(label, dense_crf_torch(*voc_scenes[j][:2]))

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")
    import engine.crf_torch as ct
    monkeypatch.setattr(ct, "dense_crf_batch", oom)
    stream = TorchCRFDriver("cpu", batch=1, prepare=lambda j: voc_scenes[j][:2], finish=lambda j, label: j,
                            threads=2)
    with pytest.raises(UserError, match="--crf_batch"):
        stream.submit(0)


@pytest.mark.pydensecrf
def test_torch_driver_batches_images_of_one_class_count_and_hands_each_its_labels(voc_scenes, monkeypatch):
    few = [(im, p[:6] / p[:6].sum(0, keepdims=True)) for im, p, _ in voc_scenes[:2]]      # 6 classes
    items = [voc_scenes[0][:2], few[0], voc_scenes[1][:2], voc_scenes[2][:2], few[1]]
    expected = [dense_crf_torch(image, probs) for image, probs in items]
    calls, got = [], {}
    import engine.crf_torch as ct
    real = ct.dense_crf_batch

    def counting(images, probs, **kw):
        calls.append((len(images), probs[0].shape[0], kw["class_chunk"]))
        return real(images, probs, **kw)
    monkeypatch.setattr(ct, "dense_crf_batch", counting)
    queue = TorchCRFDriver("cpu", batch=2, class_chunk=4)
    for i, (image, probs) in enumerate(items):
        queue.submit((image, torch.from_numpy(probs), lambda label, i=i: got.setdefault(i, label)))
    assert sorted(got) == [0, 1, 2, 4] and calls == [(2, 21, 4), (2, 6, 4)]     # full batches only
    results = queue.close()
    assert sorted(got) == [0, 1, 2, 3, 4] and calls[-1] == (1, 21, 4)
    for i in range(len(items)):
        assert got[i].dtype == np.uint8 and (got[i] == expected[i]).mean() >= 0.9999
        assert results[i] is got[i]      # close: what each job's done returned, in the order of submit

    direct = []
    PydenseCRFDriver().submit((*items[1], direct.append))
    assert len(direct) == 1 and np.array_equal(direct[0], dense_crf(*items[1]))

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(ct, "dense_crf_batch", oom)
    with pytest.raises(UserError, match="--crf_batch or set --crf_class_chunk"):
        TorchCRFDriver("cpu").submit((*items[0], direct.append))


TINY = ["--backbone", "deit_tiny_patch16_224", "--num_workers", "0", "--cpu", "--scales", "1.0"]


@pytest.mark.pydensecrf
def test_eval_seg_voc_backends_agree(voc_copy, tmp_path):
    torch.manual_seed(0)
    torch.save({"model": DualStudentNet("deit_tiny_patch16_224", 21).state_dict()}, tmp_path / "m.pth")
    res, pngs = {}, {}
    for backend in ("pydensecrf", "torch"):
        wd = tmp_path / backend
        res[backend] = eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", str(tmp_path / "m.pth"),
                                         "--work_dir", str(wd), "--crf_workers", "1", "--crf_backend", backend,
                                         "--crf_batch", "3", *TINY])
        pngs[backend] = {p.name: np.array(Image.open(p)) for p in sorted((wd / "crf").iterdir())}
    assert pngs["torch"].keys() == pngs["pydensecrf"].keys() and pngs["torch"]
    same = sum(int((pngs["torch"][k] == v).sum()) for k, v in pngs["pydensecrf"].items())
    total = sum(v.size for v in pngs["pydensecrf"].values())
    assert same / total >= 0.995
    assert abs(res["torch"]["CRF_ensemble"]["miou"] - res["pydensecrf"]["CRF_ensemble"]["miou"]) <= 0.001
    # the colour PNGs are written the same way
    for backend in ("pydensecrf", "torch"):
        some = sorted((tmp_path / backend / "crf_color").iterdir())[0]
        assert Image.open(some).mode == "P"
