"""Slow, straightforward references the tests compare the batched implementations against.

* :func:`gmm_noisy_mask_sklearn` -- model/gmm.py's noisy-label filter image by image with
  scikit-learn on the CPU, as the original implementation does;
* :func:`refine_cams_with_par_reference` -- model/pseudo_labels.py's PAR refinement image by
  image and threshold by threshold.
"""
import warnings
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import Tensor

from model.pseudo_labels import Threshold, _combine_high_low, _threshold_map


def gmm_noisy_mask_sklearn(loss: Tensor, label: Tensor, gamma: float = 0.95,
                           valid_thre: float = 1.0, min_pixels: int = 1000,
                           loss_floor: float = 0.1, ignore_index: int = 255,
                           max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4,
                           random_state: int = 0) -> Tuple[Tensor, Tensor]:
    """Reference of :func:`model.gmm.gmm_noisy_mask`, image by image with scikit-learn on the
    CPU, as the original does: ``GaussianMixture`` fitted on the candidate losses reshaped
    ``(-1, 1)``, ``predict_proba`` on all pixels of the image. Same inputs and outputs (on
    ``loss``'s device)."""
    loss_np = loss.detach().cpu().numpy()
    label_np = label.detach().cpu().numpy()
    noisy = np.zeros(loss_np.shape, dtype=bool)
    valid = np.zeros(loss_np.shape[0], dtype=bool)
    for i in range(loss_np.shape[0]):
        l_i, y_i = loss_np[i], label_np[i]
        cand = (y_i != 0) & (y_i != ignore_index) & (l_i > loss_floor)
        if cand.sum() <= min_pixels:
            continue
        gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                              random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(l_i[cand].reshape(-1, 1))
        means = gmm.means_.reshape(-1)
        if abs(means[0] - means[1]) <= valid_thre:
            continue
        valid[i] = True
        prob = gmm.predict_proba(l_i.reshape(-1, 1))[:, means.argmax()].reshape(l_i.shape)
        noisy[i] = (prob > gamma) & (y_i != 0)
    return (torch.from_numpy(noisy).to(loss.device), torch.from_numpy(valid).to(loss.device))


@torch.no_grad()
def refine_cams_with_par_reference(image: torch.Tensor, cams: torch.Tensor, cls_label: torch.Tensor,
                                   high_thre: Threshold, low_thre: Threshold,
                                   img_box: torch.Tensor, par, ignore_index: int = 255,
                                   down_scale: int = 2) -> torch.Tensor:
    """Straightforward per-image, per-threshold version of
    :func:`model.pseudo_labels.refine_cams_with_par` (same inputs and output ``(B, H, W)`` long).
    Synchronises."""
    b, k, h, w = cams.shape
    small = (h // down_scale, w // down_scale)
    small_image = F.interpolate(image, size=small, mode="bilinear", align_corners=False)
    out = []
    for thre in (high_thre, low_thre):
        stack = torch.cat([_threshold_map(thre, b, (h, w), cams), cams], dim=1)
        stack = F.interpolate(stack, size=small, mode="bilinear", align_corners=False)
        label = torch.full((b, h, w), ignore_index, dtype=torch.long, device=cams.device)
        for i in range(b):
            keys = torch.nonzero(torch.cat([cls_label.new_ones(1), cls_label[i]]) > 0)[:, 0]
            probs = stack[i:i + 1, keys].softmax(dim=1)
            refined = F.interpolate(par(small_image[i:i + 1], probs), size=(h, w),
                                    mode="bilinear", align_corners=False)
            y0, y1, x0, x1 = [int(v) for v in img_box[i].tolist()]
            label[i, y0:y1, x0:x1] = keys[refined.argmax(dim=1)[0]][y0:y1, x0:x1]
        out.append(label)
    return _combine_high_low(out[0], out[1], ignore_index)
