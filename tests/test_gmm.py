"""Batched GMM noisy-label filter (model/gmm.py) against the per-image scikit-learn reference
(tests/helpers/oracles.py)."""
import pytest
import torch

from model.gmm import fit_gmm_1d, gmm_filter, gmm_noisy_mask
from tests.helpers.oracles import gmm_noisy_mask_sklearn


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_case(seed, h, w, clean_mu=0.4, noisy_mu=3.0, noisy_frac=0.2, clean="exp",
              clean_sd=0.3, noisy_sd=0.8):
    """A pseudo label (background frame, one foreground class block, an ignored patch) and a loss
    map: foreground losses mix a clean mode (exponential or |normal|) and a noisy |normal| mode;
    background losses are small, ignored pixels have loss 0 (as the CE with ignore_index)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(h, w, dtype=torch.long)
    label[h // 8: 7 * h // 8, w // 8: 7 * w // 8] = int(torch.randint(1, 21, (1,), generator=g))
    label[h // 2:, : w // 3] = 255
    n = h * w
    if clean == "exp":
        clean_l = -clean_mu * torch.log(torch.rand(n, generator=g))
    else:
        clean_l = (clean_mu + clean_sd * torch.randn(n, generator=g)).abs()
    noisy_l = (noisy_mu + noisy_sd * torch.randn(n, generator=g)).abs()
    loss = torch.where(torch.rand(n, generator=g) < noisy_frac, noisy_l, clean_l).view(h, w)
    loss = torch.where(label == 0, 0.2 * loss, loss)
    loss = torch.where(label == 255, torch.zeros_like(loss), loss)
    return loss.float(), label


def stack(cases):
    return torch.stack([c[0] for c in cases]), torch.stack([c[1] for c in cases])


AGREEMENT_BATCHES = [
    # (seed, h, w, clean_mu, noisy_mu, noisy_frac, clean kind) per image
    [(1, 64, 64, 0.3, 3.0, 0.2, "exp"), (2, 64, 96, 0.5, 2.0, 0.4, "normal")],
    [(3, 96, 96, 0.6, 1.5, 0.1, "exp"), (4, 128, 96, 0.2, 4.5, 0.05, "normal"),
     (5, 96, 128, 0.4, 1.1, 0.3, "normal")],
    [(6, 128, 128, 0.7, 2.5, 0.5, "exp"), (7, 64, 128, 0.3, 0.8, 0.3, "exp"),
     (8, 128, 64, 0.5, 5.0, 0.02, "exp"), (9, 96, 64, 0.25, 3.5, 0.6, "normal")],
]


@pytest.mark.parametrize("batch", AGREEMENT_BATCHES)
def test_agrees_with_sklearn(batch):
    h = max(c[1] for c in batch)
    w = max(c[2] for c in batch)
    # pad every image to the batch size with ignored pixels (loss 0), as padding in training
    losses, labels = [], []
    for seed, hi, wi, cm, nm, fr, kind in batch:
        loss, label = make_case(seed, hi, wi, cm, nm, fr, kind)
        pl = torch.zeros(h, w)
        pb = torch.full((h, w), 255, dtype=torch.long)
        pl[:hi, :wi], pb[:hi, :wi] = loss, label
        losses.append(pl)
        labels.append(pb)
    loss, label = torch.stack(losses), torch.stack(labels)
    noisy, valid = gmm_noisy_mask(loss, label)
    ref_noisy, ref_valid = gmm_noisy_mask_sklearn(loss, label)
    assert torch.equal(valid, ref_valid)
    agree = (noisy == ref_noisy).float().mean(dim=(1, 2))
    assert (agree >= 0.99).all(), agree
    assert noisy.any()  # the cases are not all trivially empty


def test_parameters_close_to_sklearn():
    from sklearn.mixture import GaussianMixture

    loss, label = make_case(11, 96, 96, 0.3, 3.0, 0.3, "normal")
    cand = (label > 0) & (label < 255) & (loss > 0.1)
    means, variances, weights = fit_gmm_1d(loss.view(1, -1), cand.view(1, -1))
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    gmm.fit(loss[cand].numpy().reshape(-1, 1))
    order = torch.argsort(means[0])
    ref_order = gmm.means_.reshape(-1).argsort()
    torch.testing.assert_close(means[0, order].float(),
                               torch.tensor(gmm.means_.reshape(-1)[ref_order]).float(),
                               atol=0.02, rtol=0)
    torch.testing.assert_close(variances[0, order].float(),
                               torch.tensor(gmm.covariances_.reshape(-1)[ref_order]).float(),
                               atol=0.02, rtol=0.05)
    torch.testing.assert_close(weights[0, order].float(),
                               torch.tensor(gmm.weights_[ref_order]).float(), atol=0.01, rtol=0)


def test_converged_rows_stop_changing():
    loss, label = stack([make_case(12, 64, 64), make_case(13, 64, 64, noisy_frac=0.4)])
    x, m = loss.view(2, -1), ((label > 0) & (label < 255) & (loss > 0.1)).view(2, -1)
    ten = fit_gmm_1d(x, m, max_iter=10)
    many = fit_gmm_1d(x, m, max_iter=60)
    for a, b in zip(ten, many):  # both rows converge (change < tol) well before 10 iterations
        assert torch.equal(a, b)


def test_one_mode_is_invalid():
    g = torch.Generator().manual_seed(14)
    label = torch.ones(64, 64, dtype=torch.long)
    loss = 0.8 + 0.05 * torch.randn(64, 64, generator=g)
    noisy, valid = gmm_noisy_mask(loss[None], label[None])
    ref_noisy, ref_valid = gmm_noisy_mask_sklearn(loss[None], label[None])
    assert not valid.any() and not ref_valid.any()
    assert not noisy.any() and not ref_noisy.any()


@pytest.mark.parametrize("count,expect_valid", [(900, False), (1000, False), (1001, True)])
def test_needs_more_than_min_pixels(count, expect_valid):
    # a clearly bimodal image whose candidate count sits around the 1000-pixel limit
    g = torch.Generator().manual_seed(15)
    label = torch.zeros(48, 48, dtype=torch.long)
    label.view(-1)[:count] = 3
    loss = torch.where(torch.rand(48, 48, generator=g) < 0.3, torch.tensor(4.0), torch.tensor(0.5))
    loss = loss + 0.05 * torch.randn(48, 48, generator=g)
    noisy, valid = gmm_noisy_mask(loss[None], label[None])
    ref_noisy, ref_valid = gmm_noisy_mask_sklearn(loss[None], label[None])
    assert valid.item() == ref_valid.item() == expect_valid
    assert torch.equal(noisy, ref_noisy)
    assert noisy.any() == expect_valid


@pytest.mark.parametrize("gap,expect_valid", [(0.7, False), (0.9, False), (1.1, True), (1.4, True)])
def test_validity_threshold_on_the_mean_gap(gap, expect_valid):
    # two narrow, equally large modes: the fitted means land within a few hundredths of the truth
    g = torch.Generator().manual_seed(16)
    label = torch.full((64, 64), 7, dtype=torch.long)
    low = 0.5 + 0.04 * torch.randn(64, 64, generator=g)
    high = 0.5 + gap + 0.04 * torch.randn(64, 64, generator=g)
    loss = torch.where(torch.rand(64, 64, generator=g) < 0.5, low, high)
    means, _, _ = fit_gmm_1d(loss.view(1, -1), torch.ones(1, 64 * 64, dtype=torch.bool))
    assert abs((means[0, 0] - means[0, 1]).abs().item() - gap) < 0.05
    noisy, valid = gmm_noisy_mask(loss[None], label[None])
    ref_noisy, ref_valid = gmm_noisy_mask_sklearn(loss[None], label[None])
    assert valid.item() == ref_valid.item() == expect_valid
    assert (noisy == ref_noisy).float().mean() >= 0.999


def test_background_and_ignored_pixels_are_not_candidates():
    # foreground losses are one mode; background and ignored pixels carry a second, high mode
    # that would make the image valid if they were (wrongly) fitted
    g = torch.Generator().manual_seed(17)
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:, :32] = 5
    label[:16, 32:] = 255
    loss = torch.where(label == 5, 0.6 + 0.05 * torch.randn(64, 64, generator=g),
                       4.0 + 0.3 * torch.randn(64, 64, generator=g))
    noisy, valid = gmm_noisy_mask(loss[None], label[None])
    ref_noisy, ref_valid = gmm_noisy_mask_sklearn(loss[None], label[None])
    assert not valid.any() and not ref_valid.any()
    assert not noisy.any() and not ref_noisy.any()
    # losses at or below the 0.1 floor are not candidates either: 1200 foreground pixels of which
    # only 900 have a loss above the floor -> too few
    label2 = torch.zeros(64, 64, dtype=torch.long)
    label2.view(-1)[:1200] = 2
    loss2 = torch.where(torch.rand(64, 64, generator=g) < 0.3, torch.tensor(4.0), torch.tensor(0.5))
    loss2.view(-1)[:300] = 0.1
    noisy2, valid2 = gmm_noisy_mask(loss2[None], label2[None])
    assert not valid2.any() and not noisy2.any()


def test_background_never_dropped_and_posterior_on_all_pixels():
    loss, label = make_case(18, 96, 96, 0.3, 3.0, 0.25, "exp")
    # background pixels with a very high loss: noisy posterior ~1 (the posterior is evaluated on
    # every pixel), yet they are never dropped
    loss = torch.where(label == 0, torch.full_like(loss, 6.0), loss)
    noisy, valid = gmm_noisy_mask(loss[None], label[None])
    ref_noisy, _ = gmm_noisy_mask_sklearn(loss[None], label[None])
    assert valid.item()
    assert not noisy[0][label == 0].any()
    assert (noisy == ref_noisy).float().mean() >= 0.99
    filtered, _ = gmm_filter(loss[None], label[None])
    assert torch.equal(filtered[0][label == 0], label[label == 0])
    assert (filtered[0][label == 255] == 255).all()


def test_wide_noisy_component_flags_low_loss_pixels_like_the_original():
    # docs/method.md#quirks: a noisy component much wider than the clean one also owns the far low tail,
    # so foreground pixels with losses under the 0.1 fitting floor get flagged -- in both paths
    g = torch.Generator().manual_seed(19)
    label = torch.full((64, 64), 4, dtype=torch.long)
    loss = torch.where(torch.rand(64, 64, generator=g) < 0.5,
                       0.8 + 0.02 * torch.randn(64, 64, generator=g),
                       (3.0 + 1.5 * torch.randn(64, 64, generator=g)).abs() + 0.11)
    loss[:4] = 0.0  # four rows of exactly zero loss, below the floor: not fitted
    noisy, valid = gmm_noisy_mask(loss[None], label[None])
    ref_noisy, ref_valid = gmm_noisy_mask_sklearn(loss[None], label[None])
    assert valid.item() and ref_valid.item()
    assert noisy[0, :4].all() and ref_noisy[0, :4].all()
    assert (noisy == ref_noisy).float().mean() >= 0.99


def test_batch_mixes_valid_and_invalid_images_independently():
    h = w = 64
    good = make_case(20, h, w, 0.3, 3.0, 0.3, "normal")
    g = torch.Generator().manual_seed(21)
    one_mode = (0.5 + 0.05 * torch.randn(h, w, generator=g), torch.full((h, w), 9))
    few_label = torch.zeros(h, w, dtype=torch.long)
    few_label[:10, :50] = 2  # 500 candidates
    few = (good[0].clone(), few_label)
    loss, label = stack([good, one_mode, few, make_case(22, h, w, 0.5, 2.5, 0.1, "exp")])
    noisy, valid = gmm_noisy_mask(loss, label)
    ref_noisy, ref_valid = gmm_noisy_mask_sklearn(loss, label)
    assert valid.tolist() == ref_valid.tolist() == [True, False, False, True]
    assert not noisy[1:3].any()
    assert (noisy == ref_noisy).float().mean() >= 0.99
    filtered, fvalid = gmm_filter(loss, label)
    assert torch.equal(fvalid, valid)
    assert torch.equal(filtered, torch.where(noisy, torch.full_like(label, 255), label))
    # each image alone gives the same answer as inside the batch
    for i in range(loss.shape[0]):
        alone, alone_valid = gmm_noisy_mask(loss[i:i + 1], label[i:i + 1])
        assert torch.equal(alone[0], noisy[i])
        assert alone_valid.item() == valid[i].item()
        m_alone = fit_gmm_1d(loss[i:i + 1].view(1, -1), (label[i:i + 1] > 0).view(1, -1))[0]
        m_batch = fit_gmm_1d(loss.view(4, -1), (label > 0).view(4, -1))[0][i:i + 1]
        torch.testing.assert_close(m_alone, m_batch, atol=1e-9, rtol=1e-9)


def test_filter_keeps_input_and_dtype():
    loss, label = stack([make_case(23, 64, 64), make_case(24, 64, 64)])
    label = label.to(torch.uint8)
    before = label.clone()
    filtered, valid = gmm_filter(loss, label)
    assert torch.equal(label, before)
    assert filtered.dtype == torch.uint8 and filtered.shape == label.shape
    assert valid.all() and (filtered == 255).sum() > (label == 255).sum()
    changed = filtered != label
    assert (filtered[changed] == 255).all() and (label[changed] != 0).all()


def test_empty_and_degenerate_rows_are_finite():
    x = torch.rand(3, 50)
    mask = torch.zeros(3, 50, dtype=torch.bool)
    mask[1, :1] = True
    mask[2] = True
    x[2] = 0.7  # all candidates share one value
    means, variances, weights = fit_gmm_1d(x, mask)
    for t in (means, variances, weights):
        assert torch.isfinite(t).all()
    assert (variances >= 5e-4 - 1e-12).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_without_host_sync():
    loss, label = stack([make_case(25, 128, 128), make_case(26, 128, 128, noisy_frac=0.05),
                         make_case(27, 128, 128, noisy_mu=0.6)])
    cpu_noisy, cpu_valid = gmm_noisy_mask(loss, label)
    loss_d, label_d = loss.cuda(), label.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        noisy, valid = gmm_noisy_mask(loss_d, label_d)
        filtered, _ = gmm_filter(loss_d, label_d)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert noisy.is_cuda and filtered.is_cuda
    assert torch.equal(valid.cpu(), cpu_valid)
    assert (noisy.cpu() == cpu_noisy).float().mean() >= 0.999


def test_non_candidate_values_do_not_leak():
    loss, label = make_case(28, 64, 64)
    ref_noisy, ref_valid = gmm_noisy_mask(loss[None], label[None])
    bad = loss.clone()
    bad[label == 255] = float("inf")  # e.g. an overflowed loss at an ignored pixel
    noisy, valid = gmm_noisy_mask(bad[None], label[None])
    assert torch.equal(valid, ref_valid)
    assert torch.equal(noisy[0][label != 255], ref_noisy[0][label != 255])
