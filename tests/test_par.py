"""PAR (docs/method.md#par) reproduces the original's refinement and its weights behave as specified."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.par import PAR, dilated_neighbours


def test_par_matches_the_reference_output(ref):
    out = PAR(dilations=(1, 2, 4, 8, 12, 24), num_iter=10)(ref["par.img"], ref["par.masks"])
    assert out.shape == ref["par.out"].shape
    np.testing.assert_allclose(out.numpy(), ref["par.out"].numpy(), rtol=1e-5, atol=0)


def test_neighbour_weights_sum_to_one_plus_w2():
    torch.manual_seed(0)
    weight = PAR().affinity(torch.rand(2, 3, 20, 24))
    assert weight.shape == (2, 1, 48, 20, 24)
    assert (weight > 0).all()
    torch.testing.assert_close(weight.sum(dim=2), torch.full((2, 1, 20, 24), 1.01))


def test_position_weights_come_from_a_spread_of_9_9003():
    par = PAR(w2=1.0)
    dist = torch.tensor([d * (2 ** 0.5 if k in (0, 2, 5, 7) else 1.0)
                         for d in (1, 2, 4, 8, 12, 24) for k in range(8)])
    assert float(dist.std()) == pytest.approx(9.9003, abs=1e-4)
    expected = (-(dist / (dist.std() + 1e-8) / 0.3) ** 2).softmax(0)
    torch.testing.assert_close(par.pos_weight, expected)
    assert "pos_weight" not in par.state_dict()


def test_constant_maps_grow_by_1_01_per_iteration():
    torch.manual_seed(1)
    masks = torch.full((1, 2, 16, 16), 0.5)
    out = PAR(num_iter=3)(torch.rand(1, 3, 16, 16), masks)
    torch.testing.assert_close(out, torch.full_like(out, 0.5 * 1.01 ** 3))


def test_neighbours_are_replicate_padded_dilated_shifts_in_order():
    x = torch.arange(20.0).view(1, 1, 4, 5)
    nbr = dilated_neighbours(x, (1, 2))
    assert nbr.shape == (1, 1, 16, 4, 5)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")[0, 0]
    # pixel (1, 3): TL at dilation 1 is (0, 2); BR at dilation 2 is (3, 5) clipped to (3, 4)
    assert nbr[0, 0, 0, 1, 3] == x[0, 0, 0, 2]
    assert nbr[0, 0, 15, 1, 3] == padded[1 + 2 + 2, 3 + 2 + 2] == x[0, 0, 3, 4]
    assert nbr[0, 0, 6, 1, 3] == x[0, 0, 2, 3]  # B at dilation 1


def test_small_masks_are_first_resized_with_aligned_corners():
    torch.manual_seed(2)
    img, masks = torch.rand(1, 3, 16, 20), torch.rand(1, 2, 8, 10)
    par = PAR(num_iter=2)
    up = F.interpolate(masks, size=(16, 20), mode="bilinear", align_corners=True)
    torch.testing.assert_close(par(img, masks), par(img, up))


def test_par_follows_the_input_dtype():
    out = PAR(num_iter=1)(torch.rand(1, 3, 8, 8, dtype=torch.float64),
                          torch.rand(1, 2, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64
