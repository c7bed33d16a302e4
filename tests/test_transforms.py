"""The training augmentation of docs/data.md#loading-rules: sizes, img_box semantics, padding and
normalisation; the input statistics (:class:`datasets.transforms.InputStats`) and the paper's
formulas they keep bit for bit."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.layout import voc_layout
from datasets.lists import ensure_lists
from datasets.segmentation import EvalDataset
from datasets.transforms import TrainAugmentation, random_pad_crop, random_rescale
from utils.input_stats import IMAGENET_MEAN, IMAGENET_STD, PAPER_STATS, InputStats
from utils.errors import UserError


@pytest.mark.parametrize("h,w", [(30, 40), (100, 120), (30, 200), (200, 30), (64, 64), (65, 63)])
def test_pad_crop_box_covers_exactly_the_real_pixels(h, w):
    np.random.seed(h * 1000 + w)
    crop_size = 64
    for _ in range(20):
        img = np.full((h, w, 3), 200, dtype=np.uint8)
        crop, box = random_pad_crop(img, crop_size)
        assert crop.shape == (crop_size, crop_size, 3) and box.dtype == np.int16
        y0, y1, x0, x1 = box.tolist()
        assert y1 - y0 == min(h, crop_size) and x1 - x0 == min(w, crop_size)
        inside = np.zeros((crop_size, crop_size), bool)
        inside[y0:y1, x0:x1] = True
        assert (crop[inside] == 200).all()
        assert (crop[~inside] == 0).all(), "padding must be black in uint8 pixel space"


def test_pad_crop_moves_window_on_large_sides_and_image_on_small_sides():
    np.random.seed(0)
    offsets = set()
    for _ in range(30):
        img = np.arange(20 * 100 * 3, dtype=np.int64).reshape(20, 100, 3).astype(np.uint8)
        _, box = random_pad_crop(img, 50)
        assert box[2] == 0 and box[3] == 50          # width 100 >= 50: window moves, no padding
        offsets.add(int(box[0]))
        assert box[1] - box[0] == 20                  # height 20 < 50: image pasted at a random row
    assert len(offsets) > 5


def test_rescale_stays_within_half_to_double():
    np.random.seed(0)
    img = Image.new("RGB", (100, 60))
    sizes = [random_rescale(img, (0.5, 2.0)).size for _ in range(200)]
    ws = np.array([s[0] for s in sizes])
    assert ws.min() >= 50 and ws.max() <= 200 and ws.max() - ws.min() > 100
    for w, h in sizes:
        assert abs(w / 100 - h / 60) < 0.05


def test_normalize_uses_imagenet_mean_and_std():
    x = PAPER_STATS.normalize(np.zeros((2, 3, 3), np.uint8))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expected = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_train_augmentation_output_shapes_and_box():
    np.random.seed(1)
    torch.manual_seed(1)
    aug = TrainAugmentation(96, (0.5, 2.0))
    for h, w in [(40, 50), (300, 200), (96, 96)]:
        img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        x, box = aug(img)
        assert x.shape == (3, 96, 96) and x.dtype == torch.float32
        assert box.dtype == torch.int16 and box.shape == (4,)
        assert 0 <= box[0] < box[1] <= 96 and 0 <= box[2] < box[3] <= 96


def _bright_fraction(x, box):
    y0, y1, x0, x1 = box.tolist()
    bright = x.mean(0) > 0.5
    inside = bright[y0 + 4:y1 - 4, x0 + 4:x1 - 4].float().mean()
    return inside


@pytest.mark.parametrize("mirror", [False, True])
def test_coco_flip_mirrors_the_box_only_when_asked(mirror):
    aug = TrainAugmentation(96, (0.5, 2.0), coco_flip=True, mirror_box_on_coco_flip=mirror)
    aug.jitter = aug.grayscale = lambda im: im
    img = np.full((80, 30, 3), 255, np.uint8)
    mismatches = 0
    for seed in range(40):
        np.random.seed(seed)
        x, box = aug(img)
        if box[2] > 0 or box[3] < 96:
            mismatches += int(_bright_fraction(x, box) < 0.99)
    if mirror:
        assert mismatches == 0
    else:
        assert mismatches > 5, "the original's COCO flip leaves img_box unmirrored (docs/method.md#quirks)"


# ---------------------------------------------------------------- input statistics
_OLD_MEAN_255 = (123.675, 116.28, 103.53)   # the constants the paper's round trip was written with
_OLD_STD_255 = (58.395, 57.12, 57.375)
CLIP_LIKE = InputStats((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _all_levels(seed=0, h=24, w=32):
    """uint8 ``(h, w, 3)`` holding every level 0..255 in each channel, the rest random."""
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img.reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]
    return img


def test_the_papers_statistics_give_the_old_formulas_bit_for_bit():
    """Every form of PAPER_STATS equals, with torch.equal, the arithmetic its site had before the
    statistics moved into one place: the training transform, the evaluation set, the strong view's
    normalisation and the original's uint8 round trip."""
    img = _all_levels()
    x = torch.from_numpy(img).permute(2, 0, 1).float()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.equal(PAPER_STATS.normalize(img), (x / 255.0 - mean) / std)
    assert torch.equal(PAPER_STATS.normalize(img), (x / 255.0 - mean) / std)
    assert torch.equal(PAPER_STATS.normalize_pixels(img), (x - mean * 255.0) / (std * 255.0))
    v = x[None].repeat(2, 1, 1, 1)
    old_levels = torch.stack([((v / 255)[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)], dim=1)
    assert torch.equal(PAPER_STATS.normalize_levels(v), old_levels)
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.stack([PAPER_STATS.normalize(img)] * 2), 3 * torch.randn(2, 3, 24, 32, generator=g)])
    old = torch.stack([z[:, c] * s + m for c, (m, s) in enumerate(zip(_OLD_MEAN_255, _OLD_STD_255))], dim=1)
    old = torch.remainder(torch.trunc(old), 256) / torch.full((1, 1, 1, 1), 255.0)
    assert torch.equal(PAPER_STATS.denormalize(z), old) and torch.equal(PAPER_STATS.denormalize(z), old)
    assert PAPER_STATS.uint8_cast and PAPER_STATS.mean == IMAGENET_MEAN and PAPER_STATS.std == IMAGENET_STD


def test_train_augmentation_and_eval_set_normalise_with_the_statistics_given(voc_copy):
    """The same draws give the same 8-bit crop whatever the statistics; only its normalisation
    follows them. The evaluation set normalises with the statistics it is given."""
    img = _all_levels(1, 40, 50)
    outs = []
    for stats in (PAPER_STATS, CLIP_LIKE):
        np.random.seed(3)
        torch.manual_seed(3)
        outs.append(TrainAugmentation(32, (0.5, 2.0), stats=stats)(img)[0])
    crop = torch.round(CLIP_LIKE.denormalize(outs[1][None])[0] * 255).byte().permute(1, 2, 0).numpy()
    assert torch.equal(outs[1], CLIP_LIKE.normalize(crop)) and torch.equal(outs[0], PAPER_STATS.normalize(crop))
    layout = voc_layout(str(voc_copy))
    lists = ensure_lists(layout, None, ["val"])
    for stats in (PAPER_STATS, CLIP_LIKE):
        ds = EvalDataset(layout, lists, "val", stats=stats)
        assert ds.stats == stats and torch.equal(ds[0][1], stats.normalize_pixels(ds.raw_image(0)))
    assert EvalDataset(layout, lists, "val").stats == PAPER_STATS


def test_an_8bit_image_comes_back_exactly_through_any_family_but_the_papers_round_trip():
    """PAR and the strong view get the 8-bit image / 255: every statistics but the paper's round
    to the nearest level, so the image comes back exactly; the paper's path keeps the original's
    truncation, which drops some levels by one (docs/method.md#quirks)."""
    img = _all_levels(2)
    levels = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    exact = levels / torch.full((1, 1, 1, 1), 255.0)
    half = InputStats((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    for stats in (CLIP_LIKE, half, InputStats(IMAGENET_MEAN, IMAGENET_STD)):
        assert torch.equal(stats.denormalize(stats.normalize(img)[None]), exact)
        assert torch.equal(stats.denormalize(stats.normalize_pixels(img)[None]), exact)
        assert torch.equal(stats.denormalize(stats.normalize_levels(levels)), exact)
    paper = PAPER_STATS.denormalize(PAPER_STATS.normalize(img)[None])
    off = (paper - exact).abs()
    assert float(off.max()) <= 1 / 255 + 1e-7 and 0 < float((off > 0).float().mean()) < 0.1


@pytest.mark.parametrize("mean,std", [((0.5, 0.5), (0.5, 0.5, 0.5)), ((0.5,) * 3, (0.5, 0.0, 0.5)),
                                      ((float("nan"),) * 3, (0.5,) * 3)])
def test_impossible_statistics_are_one_line_errors(mean, std):
    with pytest.raises(UserError, match="input statistics need 3 finite means and 3 positive stds"):
        InputStats(mean, std)
