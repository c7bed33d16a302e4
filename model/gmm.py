"""GMM-based noisy pseudo-label filtering (docs/method.md#gmm-filtering), batched on the tensors' device.

In the last training phase each student's per-pixel cross-entropy against its own pseudo label is
modelled, per image, by a two-component 1-D Gaussian mixture fitted on the "candidate" pixels
(foreground, not ignored, loss above a small floor). The component with the larger mean holds the
noisy pseudo labels; pixels whose posterior for it exceeds ``gamma`` are discarded (set to 255).

The original fits scikit-learn's ``GaussianMixture(n_components=2, max_iter=10, tol=1e-2,
reg_covar=5e-4)`` per image on the CPU, a host round trip and synchronisation in every iteration.
Here the same estimator (k-means initialisation, EM, convergence test on the mean log-likelihood)
runs for the whole batch at once with masks, without any host synchronisation. The only part that
cannot be reproduced bit for bit is scikit-learn's randomly seeded k-means++ start; a
deterministic 1-D two-cluster k-means is used instead (see :func:`fit_gmm_1d`).
The tests compare against a per-image scikit-learn reference (tests/helpers/oracles.py).
"""
import math
from typing import Tuple

import torch
from torch import Tensor

from utils.labels import IGNORE_INDEX

from .settings import paper

_LOG_2PI = math.log(2.0 * math.pi)


def _kmeans_1d(x: Tensor, mask: Tensor, n: Tensor, iters: int) -> Tensor:
    """Two-cluster 1-D Lloyd k-means on the masked values of each row; returns the hard
    assignment ``(B, N)`` bool (True = upper cluster), False outside the mask.

    In 1-D the two clusters are split by the midpoint of the centres, so each Lloyd step only
    needs the count and sum of the values below a threshold: they come from each row's sorted
    values and prefix sums (one sort, then O(log N) per step). The centres start at the 25 % and
    75 % quantiles of the row's values.
    """
    big = torch.finfo(x.dtype).max
    srt = torch.sort(torch.where(mask, x, torch.full_like(x, big)), dim=1).values
    n_f = n.to(x.dtype)
    valid_sorted = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < n.unsqueeze(1)
    prefix = torch.cumsum(torch.where(valid_sorted, srt, torch.zeros_like(srt)), dim=1)
    prefix = torch.cat([torch.zeros_like(prefix[:, :1]), prefix], dim=1)  # (B, N+1)
    total = prefix.gather(1, n.unsqueeze(1)).squeeze(1)

    last = (n - 1).clamp(min=0).to(x.dtype)
    idx = torch.stack([torch.floor(last * 0.25), torch.floor(last * 0.75)], dim=1).long()
    start = srt.gather(1, idx)
    centres = torch.where((n > 0).unsqueeze(1), start, torch.zeros_like(start))
    for _ in range(iters):
        mid = 0.5 * (centres[:, 0] + centres[:, 1])
        k = torch.searchsorted(srt, mid.unsqueeze(1), right=True).squeeze(1)
        k = torch.minimum(k, n)  # number of values <= mid: the lower cluster
        s0 = prefix.gather(1, k.unsqueeze(1)).squeeze(1)
        k_f = k.to(x.dtype)
        c0 = torch.where(k > 0, s0 / k_f.clamp(min=1), centres[:, 0])
        c1 = torch.where(k < n, (total - s0) / (n_f - k_f).clamp(min=1), centres[:, 1])
        centres = torch.stack([c0, c1], dim=1)
    mid = 0.5 * (centres[:, 0] + centres[:, 1])
    return (x > mid.unsqueeze(1)) & mask


def _m_step(x: Tensor, resp: Tensor, reg_covar: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gaussian parameters from responsibilities ``resp (B, N, 2)`` (zero outside the mask), as
    scikit-learn's ``_estimate_gaussian_parameters``: returns component counts ``nk``, means and
    variances (with ``reg_covar`` added), each ``(B, 2)``."""
    nk = resp.sum(1) + 10 * torch.finfo(resp.dtype).eps
    means = (resp * x.unsqueeze(-1)).sum(1) / nk
    diff = x.unsqueeze(-1) - means.unsqueeze(1)
    variances = (resp * diff * diff).sum(1) / nk + reg_covar
    return nk, means, variances


def gmm_log_resp(values: Tensor, means: Tensor, variances: Tensor, weights: Tensor
                 ) -> Tuple[Tensor, Tensor]:
    """E-step of the mixture: for ``values (B, N)`` and per-row parameters ``(B, 2)`` returns the
    log posterior of each component ``(B, N, 2)`` and the per-sample log-likelihood ``(B, N)``."""
    x = values.to(means.dtype).unsqueeze(-1)
    prec = torch.rsqrt(variances).unsqueeze(1)  # precision Cholesky factor of a 1x1 covariance
    y = x * prec - means.unsqueeze(1) * prec
    log_prob = -0.5 * (_LOG_2PI + y * y) + torch.log(prec)
    weighted = log_prob + torch.log(weights).unsqueeze(1)
    log_norm = torch.logsumexp(weighted, dim=-1)
    return weighted - log_norm.unsqueeze(-1), log_norm


def fit_gmm_1d(values: Tensor, mask: Tensor, max_iter: int = 10, tol: float = 1e-2,
               reg_covar: float = 5e-4, kmeans_iter: int = 30,
               dtype: torch.dtype = torch.float64) -> Tuple[Tensor, Tensor, Tensor]:
    """Fit one two-component 1-D Gaussian mixture per row, on that row's masked values only.

    Same estimator as scikit-learn's ``GaussianMixture(n_components=2, covariance_type="full",
    init_params="kmeans", n_init=1, max_iter, tol, reg_covar)``:

    1. initialisation: a two-cluster k-means of the row's values gives one-hot responsibilities,
       then an M-step (``reg_covar`` added to the variances, weights = cluster fractions). The
       k-means here is deterministic: ``kmeans_iter`` Lloyd iterations started from the 25 % /
       75 % quantiles (scikit-learn uses a seeded k-means++ start and stops early at a centre-shift
       tolerance; in 1-D both usually end on nearly the same partition);
    2. up to ``max_iter`` EM iterations (E-step, M-step); a row stops once the change of its mean
       log-likelihood lower bound is below ``tol`` -- as in scikit-learn the M-step of the
       converging iteration is kept, later iterations leave the row unchanged.

    Rows are independent and may hold any number of masked values; no host synchronisation.

    Args:
        values: ``(B, N)`` float samples (e.g. per-pixel losses).
        mask: ``(B, N)`` bool, which samples of each row the mixture is fitted on.
        dtype: computation precision (float64 by default, as scikit-learn).

    Returns:
        ``means (B, 2)``, ``variances (B, 2)``, ``weights (B, 2)`` (mixing proportions). The order
        of the two components is arbitrary. Rows without masked values get finite placeholders.
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must be the "
                         "same (B, N) shape")
    mask = mask.bool()
    # samples outside the mask are never used; zero them so no inf/NaN there can leak into sums
    x = torch.where(mask, values.detach().to(dtype), 0.0)
    maskf = mask.to(dtype)
    n = mask.sum(1)
    n_safe = n.clamp(min=1).to(dtype).unsqueeze(1)

    upper = _kmeans_1d(x, mask, n, kmeans_iter).to(dtype)
    resp = torch.stack([maskf - upper, upper], dim=-1)
    nk, means, variances = _m_step(x, resp, reg_covar)
    weights = nk / n_safe

    zero = torch.zeros((), dtype=dtype, device=x.device)
    lower_bound = torch.full((x.shape[0],), -math.inf, dtype=dtype, device=x.device)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        log_resp, log_norm = gmm_log_resp(x, means, variances, weights)
        # torch.where rather than a product with the mask: unmasked samples never leak NaN/inf
        new_lb = torch.where(mask, log_norm, zero).sum(1) / n_safe.squeeze(1)
        resp = torch.where(mask.unsqueeze(-1), log_resp.exp(), zero)
        nk, new_means, new_vars = _m_step(x, resp, reg_covar)
        new_weights = nk / nk.sum(1, keepdim=True)
        keep = active.unsqueeze(1)
        means = torch.where(keep, new_means, means)
        variances = torch.where(keep, new_vars, variances)
        weights = torch.where(keep, new_weights, weights)
        converged = (new_lb - lower_bound).abs() < tol
        lower_bound = torch.where(active, new_lb, lower_bound)
        active = active & ~converged
    return means, variances, weights


def gmm_noisy_mask(loss: Tensor, label: Tensor, gamma: float = paper("gamma"), valid_thre: float = paper("gmm_valid_thre"),
                   min_pixels: int = 1000, loss_floor: float = 0.1, ignore_index: int = IGNORE_INDEX,
                   max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4
                   ) -> Tuple[Tensor, Tensor]:
    """Pixels whose pseudo label the GMM filter judges noisy (docs/method.md#gmm-filtering), batched.

    Per image: candidates are pseudo-label foreground pixels (label not 0, not ``ignore_index``)
    with loss above ``loss_floor``. An image is *valid* when it has more than ``min_pixels``
    candidates and the two fitted component means differ by more than ``valid_thre``. The
    component with the larger mean is the noisy one; its posterior is evaluated on every pixel of
    the image (background and ignored pixels included, as the original). A pixel is noisy when
    the image is valid, the posterior exceeds ``gamma`` and its label is not background.

    Args:
        loss: ``(B, H, W)`` per-pixel loss of a student against its own pseudo labels.
        label: ``(B, H, W)`` integer pseudo labels (0 background, ``ignore_index`` ignored).

    Returns:
        ``noisy (B, H, W)`` bool and ``valid (B,)`` bool.
    """
    if loss.shape != label.shape or loss.dim() != 3:
        raise ValueError(f"loss {tuple(loss.shape)} and label {tuple(label.shape)} must be the "
                         "same (B, H, W) shape")
    b = loss.shape[0]
    x = loss.detach().reshape(b, -1)
    lab = label.reshape(b, -1)
    cand = (lab != 0) & (lab != ignore_index) & (x > loss_floor)
    means, variances, weights = fit_gmm_1d(x, cand, max_iter=max_iter, tol=tol,
                                           reg_covar=reg_covar)
    valid = (cand.sum(1) > min_pixels) & ((means[:, 0] - means[:, 1]).abs() > valid_thre)
    log_resp, _ = gmm_log_resp(x, means, variances, weights)
    noisy_comp = means.argmax(1)  # ties -> component 0, as numpy's argmax
    post = log_resp.gather(2, noisy_comp.view(b, 1, 1).expand(b, x.shape[1], 1)).squeeze(2).exp()
    noisy = valid.unsqueeze(1) & (post > gamma) & (lab != 0)
    return noisy.view(loss.shape), valid


def gmm_filter(loss: Tensor, label: Tensor, ignore_index: int = IGNORE_INDEX, **kwargs
               ) -> Tuple[Tensor, Tensor]:
    """Filtered pseudo labels (docs/method.md#gmm-filtering): ``label`` with the pixels :func:`gmm_noisy_mask`
    flags set to ``ignore_index``. Returns ``(filtered (B, H, W), valid (B,))``; ``label`` itself
    is not modified. Keyword arguments go to :func:`gmm_noisy_mask`."""
    noisy, valid = gmm_noisy_mask(loss, label, ignore_index=ignore_index, **kwargs)
    return label.masked_fill(noisy, ignore_index), valid
