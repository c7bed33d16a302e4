"""CAM -> label (docs/method.md#cams), PTC labels and affinity targets (docs/method.md#patch-token-contrast), PAR-refined pseudo labels
(docs/method.md#par) and the de-normalised image they use match the original implementation."""

import pytest
import torch

import torch.nn.functional as F

from utils.input_stats import PAPER_STATS

from model.par import PAR
from model.pseudo_labels import box_mask, cam_to_label, label_to_aff_mask, ptc_labels, refine_cams_with_par
from tests.helpers.oracles import refine_cams_with_par_reference


def test_three_way_labels_match_the_reference(ref):
    valid_cam, label = cam_to_label(ref["cam"], ref["cls_label"], ref["img_box"], bkg_thre=0.5,
                                    high_thre=0.7, low_thre=0.25, ignore_mid=True, ignore_index=255)
    assert torch.equal(valid_cam, ref["cam_to_label.valid_cam"])
    assert label.dtype == torch.long
    assert torch.equal(label, ref["cam_to_label.label"])


def test_per_image_high_threshold_labels_match_the_reference(ref):
    high = ref["cam_to_label_dynamic.high_thre"]
    _, label = cam_to_label(ref["cam"], ref["cls_label"], ref["img_box"], bkg_thre=0.5,
                            high_thre=high, low_thre=0.25, ignore_mid=True)
    assert torch.equal(label, ref["cam_to_label_dynamic.label"])
    # one image at a time with a float threshold gives the same labels
    for i in range(2):
        _, single = cam_to_label(ref["cam"][i:i + 1], ref["cls_label"][i:i + 1],
                                 ref["img_box"][i:i + 1], high_thre=float(high[i]), ignore_mid=True)
        assert torch.equal(single[0], label[i])


def test_plain_labelling_is_background_at_or_below_bkg_thre_and_never_ignores():
    cam = torch.tensor([0.2, 0.5, 0.6, 0.9]).view(1, 1, 1, 4).repeat(1, 2, 1, 1)
    cam[:, 1] = torch.tensor([0.1, 0.4, 0.7, 0.95])
    _, label = cam_to_label(cam, torch.tensor([[1.0, 1.0]]), bkg_thre=0.5)
    assert label.tolist() == [[[0, 0, 2, 2]]]
    _, label = cam_to_label(cam, torch.tensor([[1.0, 0.0]]), bkg_thre=0.5)
    assert label.tolist() == [[[0, 0, 1, 1]]], "absent classes must not win"


def test_three_way_labelling_bands():
    cam = torch.tensor([0.1, 0.25, 0.26, 0.7, 0.71]).view(1, 1, 1, 5)
    _, label = cam_to_label(cam, torch.ones(1, 1), bkg_thre=0.5, high_thre=0.7, low_thre=0.25,
                            ignore_mid=True)
    assert label.tolist() == [[[0, 0, 255, 255, 1]]]


def test_everything_outside_the_box_is_ignored():
    cam = torch.ones(2, 1, 6, 7)
    box = torch.tensor([[1, 4, 2, 7], [0, 6, 0, 3]], dtype=torch.int16)
    _, label = cam_to_label(cam, torch.ones(2, 1), box, ignore_mid=True)
    expected = torch.full((2, 6, 7), 255)
    expected[0, 1:4, 2:7] = 1
    expected[1, :, 0:3] = 1
    assert torch.equal(label, expected)


def test_pixel_box_on_a_token_map_reproduces_the_quirk_and_box_scale_corrects_it():
    # crop 448, 28x28 tokens; real image rows [10, 300), columns [100, 448)
    box = torch.tensor([[10, 300, 100, 448], [0, 448, 20, 448]])
    quirk = box_mask(box, (28, 28), box_scale=1.0)
    assert not quirk[0].any(), "x0 = 100 >= 28 leaves no token"
    assert torch.equal(quirk[1], torch.arange(28).view(1, 28).expand(28, 28) >= 20)
    fixed = box_mask(box, (28, 28), box_scale=1 / 16)
    rows, cols = fixed[0].any(1), fixed[0].any(0)
    assert rows.nonzero().flatten().tolist() == list(range(0, 19))  # 10/16 -> 0, 300/16 -> 19
    assert cols.nonzero().flatten().tolist() == list(range(6, 28))  # 100/16 -> 6
    assert fixed[1].all() == False and fixed[1][:, 1:].all()  # 20/16 -> column 1 onwards

    cam = torch.ones(2, 3, 448, 448)
    lab_q = ptc_labels(cam, torch.ones(2, 3), box, 0.7, 0.25, (28, 28))
    lab_f = ptc_labels(cam, torch.ones(2, 3), box, 0.7, 0.25, (28, 28), box_scale=1 / 16)
    assert (lab_q[0] == 255).all() and (lab_f[0][fixed[0]] == 1).all()
    assert ((lab_f[0] == 255) == ~fixed[0]).all()


def test_ptc_labels_resize_the_aux_cam_to_the_token_grid_then_label_three_ways():
    torch.manual_seed(0)
    cam = torch.rand(2, 4, 32, 48)
    y = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    box = torch.tensor([[0, 2, 0, 3], [1, 4, 0, 6]])
    high = torch.tensor([0.6, 0.55])
    label = ptc_labels(cam, y, box, high, 0.25, (4, 6))
    small = F.interpolate(cam, size=(4, 6), mode="bilinear", align_corners=False)
    _, expected = cam_to_label(small, y, box, bkg_thre=0.5, high_thre=high, low_thre=0.25,
                               ignore_mid=True)
    assert label.shape == (2, 4, 6) and torch.equal(label, expected)


def test_affinity_mask_matches_the_reference(ref):
    mask = label_to_aff_mask(ref["aff.label"])
    assert mask.shape == (2, 48, 48)
    assert torch.equal(mask.long(), ref["aff.mask"])


def test_affinity_mask_ignores_the_diagonal_and_ignored_tokens():
    label = torch.tensor([[[0, 1], [255, 0]]])
    mask = label_to_aff_mask(label).long()[0]
    assert (mask.diagonal() == 255).all()
    assert (mask[2] == 255).all() and (mask[:, 2] == 255).all()
    assert mask[0, 3] == 1 and mask[3, 0] == 1, "background pairs are positives"
    assert mask[0, 1] == 0 and mask[1, 3] == 0
    assert torch.equal(mask, mask.T)


def test_denormalize_matches_the_reference(ref):
    out = PAPER_STATS.denormalize(ref["denormalize.input"])
    assert out.dtype == torch.float32
    assert torch.equal(out, ref["denormalize.out"])
    levels = out * 255
    assert torch.equal(levels, levels.round()) and out.min() >= 0 and out.max() <= 1


def _refine_args(ref, high):
    cams = ref["cam"] * ref["cls_label"][:, :, None, None]
    return (ref["refine.img"], cams, ref["cls_label"], high, 0.25, ref["img_box"], PAR())


def test_refined_pseudo_labels_match_the_reference(ref):
    expected = ref["refine.label"].long()
    args = _refine_args(ref, ref["refine.high_thre_map"])
    label = refine_cams_with_par(*args)
    assert label.dtype == torch.long and label.shape == (2, 48, 64)
    assert torch.equal(label, expected)
    assert torch.equal(refine_cams_with_par_reference(*args), expected)
    assert torch.equal(refine_cams_with_par(*args, max_channels=3), expected)


def test_per_image_threshold_vector_refines_like_the_threshold_map(ref):
    high = ref["refine.high_thre_map"].amax(dim=(1, 2, 3))
    assert torch.equal(refine_cams_with_par(*_refine_args(ref, high)), ref["refine.label"].long())


def test_batched_refinement_equals_the_per_image_version_on_random_inputs():
    gen = torch.Generator().manual_seed(7)
    b, k, h, w = 4, 5, 24, 32
    image = torch.rand(b, 3, h, w, generator=gen)
    y = (torch.rand(b, k, generator=gen) < 0.4).float()
    y[0] = 0  # no class: background only
    y[1] = 1  # every class
    y[2] = 0
    y[2, 3] = 1  # a single class
    cams = torch.rand(b, k, h, w, generator=gen) ** 2 * y[:, :, None, None]
    box = torch.tensor([[0, h, 0, w], [3, h - 5, 2, w], [5, 20, 7, 30], [0, 10, 0, w]])
    high = 0.5 + 0.3 * torch.rand(b, generator=gen)
    par = PAR(num_iter=4)
    expected = refine_cams_with_par_reference(image, cams, y, high, 0.25, box, par)
    assert torch.equal(refine_cams_with_par(image, cams, y, high, 0.25, box, par), expected)
    compact = refine_cams_with_par(image, cams, y, high, 0.25, box, par, max_channels=k + 1)
    assert torch.equal(compact, expected)
    assert set(expected.unique().tolist()) <= {0, 255} | set(range(1, k + 1))
    assert (expected[0] != 255).sum() == (expected[0] == 0).sum(), "no class: only background"
    assert set(expected[2].unique().tolist()) <= {0, 4, 255}


def test_refined_labels_are_ignored_outside_the_box_and_keep_only_present_classes():
    torch.manual_seed(3)
    cams = torch.rand(2, 3, 16, 16)
    y = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    box = torch.tensor([[2, 12, 4, 16], [0, 16, 0, 8]])
    label = refine_cams_with_par(torch.rand(2, 3, 16, 16), cams * y[:, :, None, None], y, 0.6, 0.25,
                                 box, PAR(num_iter=2))
    inside = box_mask(box, (16, 16))
    assert (label[~inside] == 255).all()
    assert set(label[0].unique().tolist()) <= {0, 2, 255}
    assert set(label[1].unique().tolist()) <= {0, 1, 3, 255}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_reference_labels_and_image(ref):
    cuda = {k: v.cuda() for k, v in ref.items()}
    assert torch.equal(PAPER_STATS.denormalize(cuda["denormalize.input"]), cuda["denormalize.out"])
    cams = cuda["cam"] * cuda["cls_label"][:, :, None, None]
    label = refine_cams_with_par(cuda["refine.img"], cams, cuda["cls_label"],
                                 cuda["refine.high_thre_map"], 0.25, cuda["img_box"], PAR())
    assert torch.equal(label, cuda["refine.label"].long())
