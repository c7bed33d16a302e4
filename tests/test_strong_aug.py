"""Batched strong augmentation (model/strong_aug.py) against the per-image PIL reference."""
import pytest
import torch

from utils.input_stats import IMAGENET_MEAN, IMAGENET_STD, PAPER_STATS, InputStats
from model.strong_aug import (OP_NAMES, draw_ops, op_values,
                              strong_augment, strong_augment_pil)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_images(b, h, w, seed=0):
    """Uint8-quantised images in [0, 1]: per-channel gradients of random range, noise, a flat
    block, and (image 1) a constant channel and (image 2) a narrow value range."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for i in range(b):
        lo = 0.4 * torch.rand(3, 1, 1, generator=g)
        hi = lo + 0.2 + 0.4 * torch.rand(3, 1, 1, generator=g)
        x = lo + (hi - lo) * (0.5 * xx + 0.5 * yy * torch.rand(3, 1, 1, generator=g))
        x = x + 0.05 * torch.randn(3, h, w, generator=g)
        x[:, h // 3: h // 2, w // 4: w // 2] = torch.rand(3, 1, 1, generator=g)
        if i == 1:
            x[1] = 0.5
        if i == 2:
            x = 0.45 + 0.1 * x
        out.append(x.clamp(0, 1))
    return torch.round(torch.stack(out) * 255) / 255


def to_255(y):
    """Normalised tensor -> 0..255 values (flip kept)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (y * std + mean) * 255


def pil_batch(x, ops):
    return torch.stack([strong_augment_pil(x[i], ops[i]) for i in range(x.shape[0])])


def test_op_values_at_magnitude_10():
    assert op_values(10) == (2, pytest.approx(0.7))


def test_shape_dtype_device_kept():
    x = make_images(3, 40, 56)
    y = strong_augment(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device


@pytest.mark.parametrize("op", OP_NAMES)
def test_single_op_matches_pil(op):
    x = make_images(4, 72, 88, seed=1)
    ops = [[op]] * 4
    diff = (to_255(strong_augment(x, ops=ops)) - to_255(pil_batch(x, ops))).abs()
    # both produce the same 8-bit values; what is left is float rounding of the normalisation
    assert diff.max() < 1e-3, (op, diff.max())


def test_random_chains_match_pil():
    x = make_images(4, 64, 80, seed=2)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        y, ops = strong_augment(x, generator=g, return_ops=True)
        assert all(len(row) == 5 for row in ops)
        diff = (to_255(y) - to_255(pil_batch(x, ops))).abs()
        assert diff.max() < 1e-3, (ops, diff.max())


def test_repeated_ops_and_edge_histograms_match_pil():
    # repeated ops, a constant image (AutoContrast/Equalize identity branches) and a tiny image
    # whose Equalize table reaches 256 at the top value (PIL clips it to 255)
    const = torch.full((1, 3, 24, 32), 77 / 255)
    tiny = torch.full((1, 3, 16, 32), 10 / 255)
    tiny[0, :, 0, 0] = 200 / 255
    for x in (const, tiny, make_images(1, 30, 30, seed=4)):
        for ops in (["Equalize"] * 5, ["AutoContrast", "Posterize", "Equalize", "Contrast",
                                        "Sharpness"], ["Color", "Brightness", "AutoContrast",
                                                       "Sharpness", "Sharpness"]):
            diff = (to_255(strong_augment(x, ops=[ops])) - to_255(pil_batch(x, [ops]))).abs()
            assert diff.max() < 1e-3, (ops, diff.max())


def test_output_is_flipped_and_in_range():
    x = make_images(2, 32, 48, seed=5)
    y = strong_augment(x, ops=[["Brightness"], ["Posterize"]])
    back = to_255(y.flip(-1)) / 255  # un-flip, de-normalise
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    # Brightness 0.7 and 2-bit Posterize of the un-flipped image, value by value
    v = torch.round(x * 255)
    torch.testing.assert_close(back[0] * 255, torch.trunc(v[0] * 0.7), atol=1e-3, rtol=0)
    torch.testing.assert_close(back[1] * 255, torch.floor(v[1] / 64) * 64, atol=1e-3, rtol=0)


def test_pixel_alignment_apart_from_the_flip():
    # a vertical edge at column 29 of a 64-wide image stays at column 29 after un-flipping
    h, w, col = 40, 64, 29
    x = torch.full((1, 3, h, w), 20 / 255)
    x[..., col:] = 220 / 255
    g = torch.Generator().manual_seed(6)
    chains = [[op] for op in OP_NAMES] + draw_ops(10, g)
    for ops in chains:
        y = to_255(strong_augment(x, ops=[ops])[0].flip(-1))
        step = (y[..., 1:] - y[..., :-1]).abs().sum(0)  # (h, w-1) horizontal differences
        assert (step.argmax(1) == col - 1).all(), ops
        assert step[:, col - 1].min() > 0


def test_images_get_their_own_draws_and_seed_reproduces():
    x = make_images(8, 24, 24, seed=7)
    y1, ops1 = strong_augment(x, generator=torch.Generator().manual_seed(8), return_ops=True)
    y2, ops2 = strong_augment(x, generator=torch.Generator().manual_seed(8), return_ops=True)
    _, ops3 = strong_augment(x, generator=torch.Generator().manual_seed(9), return_ops=True)
    assert ops1 == ops2 and torch.equal(y1, y2)
    assert ops3 != ops1
    assert len({tuple(row) for row in ops1}) > 1
    # the draws are what draw_ops gives for the same generator state
    assert ops1 == draw_ops(8, torch.Generator().manual_seed(8))


def test_draws_cover_all_ops_uniformly():
    ops = draw_ops(1400, torch.Generator().manual_seed(10))
    flat = [name for row in ops for name in row]
    counts = [flat.count(name) for name in OP_NAMES]
    assert all(abs(c - 1000) < 150 for c in counts), counts


def test_batched_result_equals_per_image_result():
    x = make_images(4, 32, 40, seed=11)
    y, ops = strong_augment(x, generator=torch.Generator().manual_seed(12), return_ops=True)
    for i in range(4):
        torch.testing.assert_close(strong_augment(x[i:i + 1], ops=[ops[i]]), y[i:i + 1],
                                   atol=0, rtol=0)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        strong_augment(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError):
        strong_augment(torch.rand(2, 3, 8, 8), ops=[["Equalize"]])
    with pytest.raises(ValueError):
        strong_augment(torch.rand(1, 3, 8, 8), ops=[["Rotate"]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_pil_without_host_sync():
    x = make_images(4, 64, 80, seed=13)
    g = torch.Generator().manual_seed(14)
    x_d = x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [strong_augment(x_d, generator=g, return_ops=True) for _ in range(4)]
        outs += [strong_augment(x_d, ops=[[op]] * 4, return_ops=True) for op in OP_NAMES]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for y, ops in outs:
        assert y.is_cuda
        diff = (to_255(y.cpu()) - to_255(pil_batch(x, ops))).abs()
        assert diff.max() < 1e-3, (ops, diff.max())


def test_the_view_is_normalised_with_the_statistics_given():
    """Another family's statistics change the normalisation only: the same ops give the same 8-bit
    view, equal to PIL's, and the default is the paper's ImageNet constants bit for bit."""
    clip = InputStats((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    x = make_images(3, 40, 56, seed=4)
    ops = [["Equalize", "Color"], ["Sharpness"], ["Posterize", "Contrast"]]
    ours = strong_augment(x, ops=ops, stats=clip)
    pil = torch.stack([strong_augment_pil(x[i], ops[i], stats=clip) for i in range(3)])
    assert torch.equal(clip.denormalize(ours), clip.denormalize(pil))
    levels = torch.round(clip.denormalize(ours) * 255)
    assert (to_255(strong_augment(x, ops=ops)) - levels).abs().max() < 1e-3
    assert torch.equal(strong_augment(x, ops=ops), strong_augment(x, ops=ops, stats=PAPER_STATS))
