"""The confusion-matrix metric matches the original's scores and reduces across processes."""
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from datasets.classes import VOC_DISPLAY_NAMES
from utils.metric import ConfusionMatrix, ThresholdSweep, format_table

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")


def test_scores_match_the_reference_fixture():
    data = np.load(os.path.join(FIXTURES, "components.npz"))
    meta = json.load(open(os.path.join(FIXTURES, "components.json")))
    cm = ConfusionMatrix(21)
    for i in range(4):
        cm.update(data[f"scores.gts.{i}"], data[f"scores.preds.{i}"])
    s = cm.compute()
    np.testing.assert_allclose(s["iou"], data["scores.iou"], rtol=1e-12, equal_nan=True)
    assert s["miou"] == pytest.approx(meta["scores.miou"], rel=1e-12)
    assert s["pAcc"] == pytest.approx(meta["scores.pAcc"], rel=1e-12)
    assert s["mAcc"] == pytest.approx(meta["scores.mAcc"], rel=1e-12)


def test_hand_computed_case_with_ignore_and_absent_class():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor(gt), torch.tensor(pred))
    s = cm.compute()
    # ignored pixels count for neither; class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: 1/(2+1-1)
    np.testing.assert_allclose(s["iou"][:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(s["iou"][3])
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pAcc"] == pytest.approx(4 / 6)
    assert s["mAcc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_prediction_outside_class_range_counts_as_a_miss():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 2]), np.array([0, 255, 2]))
    s = cm.compute()
    np.testing.assert_allclose(s["iou"], [1.0, 0.0, 1.0])
    assert s["pAcc"] == pytest.approx(2 / 3)


def test_accumulating_images_equals_one_big_update():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (7, 9)) for _ in range(5)]
    preds = [rng.integers(0, 5, (7, 9)) for _ in range(5)]
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    for g, p in zip(gts, preds):
        a.update(g, p)
    b.update(np.concatenate([g.ravel() for g in gts]), np.concatenate([p.ravel() for p in preds]))
    assert torch.equal(a.mat, b.mat)



def test_adding_precomputed_counts_equals_updating_with_the_pixels_behind_them():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, (6, 8))
    gt[0, :3] = 255                         # ignored pixels are left out of the counts as well
    pred = rng.integers(0, 4, (6, 8))
    pred[1, :2] = 9                         # a prediction outside [0, C): the miss column
    by_pixels = ConfusionMatrix(4)
    by_pixels.update(gt, pred)
    keep = gt < 4
    inside = keep & (pred < 4)
    square = np.bincount(gt[inside] * 4 + pred[inside], minlength=16).reshape(4, 4)
    by_counts = ConfusionMatrix(4)
    by_counts.add_counts(square)
    by_counts.update(gt[keep & (pred >= 4)], pred[keep & (pred >= 4)])
    assert torch.equal(by_counts.mat, by_pixels.mat)
    twice = ConfusionMatrix(4)
    twice.update(gt, pred)
    twice.add_counts(by_pixels.mat.clone())     # (C, C+1): the miss column is added too
    assert torch.equal(twice.mat, 2 * by_pixels.mat)
    assert by_counts.compute()["miou"] == by_pixels.compute()["miou"]


@pytest.mark.parametrize("counts", [np.zeros((4, 3), dtype=np.int64), np.zeros((3, 4), dtype=np.int64),
                                    np.zeros(16, dtype=np.int64), np.zeros((4, 4), dtype=np.float32)])
def test_counts_of_the_wrong_shape_or_type_are_refused(counts):
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match="counts must be"):
        cm.add_counts(counts)
    assert int(cm.mat.sum()) == 0

def _matrix():
    return ConfusionMatrix(6)


def _sweep():
    return ThresholdSweep(6, [0.2, 0.6])


def _reduce_worker(rank, world, port, make, cases, out):
    """Rank ``rank`` of ``world``: ``make()`` updated with its share of ``cases``, summed over the
    ranks; rank 0 puts the counts in ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    counts = make()
    for case in cases[rank::world]:
        counts.update(*case)
    counts.reduce_from_all_processes()
    if rank == 0:
        out.put((counts.mat if isinstance(counts, ConfusionMatrix) else counts.counts).numpy())
    dist.barrier()
    dist.destroy_process_group()


def test_reduce_across_two_processes_equals_one_process():
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 6, (11, 13)) for _ in range(7)]
    preds = [rng.integers(0, 6, (11, 13)) for _ in range(7)]
    single = ConfusionMatrix(6)
    for g, p in zip(gts, preds):
        single.update(g, p)
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_reduce_worker, args=(2, port, _matrix, list(zip(gts, preds)), out), nprocs=2,
                       start_method="spawn")
    np.testing.assert_array_equal(out.get(), single.mat.numpy())


def test_reduce_without_process_group_is_a_no_op():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    before = cm.mat.clone()
    cm.reduce_from_all_processes()
    assert torch.equal(cm.mat, before)



def _sweep_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(0, 6, (37, 41), generator=g)
    gt[torch.rand(gt.shape, generator=g) < 0.1] = 255                 # ignored pixels
    score = torch.rand(gt.shape, generator=g)
    score[:3] = torch.tensor([0.1, 0.5, 0.45])[:, None]                  # scores equal to a threshold
    score[3, :5] = float("nan")                                          # a NaN never passes
    cls = torch.randint(1, 7, gt.shape, generator=g)                    # 6: outside [0, 6), a miss
    return gt, score, cls


@pytest.mark.parametrize("thresholds", [[0.1, 0.45, 0.5, 0.9], [0.5, 0.1, 0.45, 0.45, 0.05], [0.3]])
def test_threshold_sweep_equals_one_confusion_matrix_per_threshold(thresholds):
    sweep = ThresholdSweep(6, thresholds)
    expected = [ConfusionMatrix(6) for _ in thresholds]
    for seed in range(3):
        gt, score, cls = _sweep_case(seed)
        sweep.update(gt, score, cls)
        for t, cm in zip(thresholds, expected):
            t32 = torch.tensor(t, dtype=torch.float32)
            cm.update(gt, torch.where(score > t32, cls, torch.zeros_like(cls)))
    got = sweep.matrices()
    assert len(got) == len(thresholds)
    for t, a, b in zip(thresholds, got, expected):
        assert torch.equal(a.mat, b.mat), t


def test_threshold_sweep_refuses_maps_of_different_sizes():
    sweep = ThresholdSweep(3, [0.5])
    with pytest.raises(ValueError, match="as many pixels"):
        sweep.update(torch.zeros(4, dtype=torch.long), torch.zeros(5), torch.zeros(4, dtype=torch.long))


def test_threshold_sweep_reduces_across_two_processes():
    cases = [_sweep_case(seed) for seed in range(4)]
    single = _sweep()
    for case in cases:
        single.update(*case)
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_reduce_worker, args=(2, 29500 + (os.getpid() + 500) % 1000, _sweep, cases, out),
                       nprocs=2, start_method="spawn")
    np.testing.assert_array_equal(out.get(), single.counts.numpy())

def test_table_lists_the_classes_present_in_the_ground_truth_and_their_mean():
    iou = np.full(21, np.nan)
    iou[0], iou[15], iou[3] = 0.9, 0.5, 0.0          # bird: predicted, but absent from the ground truth
    present = np.zeros(21, bool)
    present[[0, 15]] = True
    table = format_table({"Seg_1": iou, "CAM_1": iou}, VOC_DISPLAY_NAMES, present)
    lines = table.splitlines()
    assert lines[0].split() == ["Class", "Seg_1", "CAM_1"]
    assert lines[1].split() == ["bg", "90.000", "90.000"]
    assert lines[2].split() == ["person", "50.000", "50.000"]
    assert lines[3].split() == ["mIoU", "70.000", "70.000"]
    assert lines[4] == "(19 of 21 classes have no ground truth in this split and are not listed)"
    assert len(lines) == 5 and "bird" not in table and "aeroplane" not in table
    full = format_table({"Seg_1": np.linspace(0, 1, 21)}, VOC_DISPLAY_NAMES).splitlines()
    assert len(full) == 23 and full[-1].split() == ["mIoU", "50.000"]
