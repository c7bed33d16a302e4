"""The losses of docs/method.md#patch-token-contrast match the original and their definitions."""
import pytest
import torch
import torch.nn.functional as F

from model.losses import (balanced_seg_loss, cls_loss, consistency_loss, discrepancy_loss,
                          ptc_loss)


def test_ptc_loss_matches_the_reference(ref):
    loss = ptc_loss(ref["aff.fmap"], ref["aff.mask"])
    assert loss.dim() == 0
    assert float(loss) == pytest.approx(float(ref["aff.ptc_loss"]), rel=1e-5)


def test_ptc_loss_is_zero_for_identical_positives_and_orthogonal_negatives():
    fmap = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 3)
    mask = torch.tensor([[255, 1, 0], [1, 255, 0], [0, 0, 255]]).view(1, 3, 3)
    # positives: cos 1 twice -> 1 - 2/3; negatives: cos 0 -> 0
    assert float(ptc_loss(fmap, mask)) == pytest.approx(0.5 * (1 - 2 / 3))


def test_balanced_seg_loss_matches_the_reference(ref):
    loss = balanced_seg_loss(ref["seg_loss.logits"], ref["seg_loss.label"])
    assert float(loss) == pytest.approx(float(ref["seg_loss.loss"]), rel=1e-5)


def test_balanced_seg_loss_averages_background_and_foreground_means():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    label = torch.randint(0, 4, (2, 5, 6))
    label[0, 0] = 255
    bg = label.masked_fill(label != 0, 255)
    fg = label.masked_fill(label == 0, 255)
    expected = 0.5 * (F.cross_entropy(logits, bg, ignore_index=255)
                      + F.cross_entropy(logits, fg, ignore_index=255))
    torch.testing.assert_close(balanced_seg_loss(logits, label), expected)
    only_bg = torch.where(label == 255, label, torch.zeros_like(label))
    loss = balanced_seg_loss(logits, only_bg)
    assert torch.isfinite(loss), "an empty foreground group contributes 0, not NaN"
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(logits, only_bg, ignore_index=255))


def test_cls_loss_is_the_mean_binary_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    expected = F.binary_cross_entropy_with_logits(logits, y)
    torch.testing.assert_close(cls_loss(logits, y), expected)


def test_discrepancy_loss_is_a_per_channel_spatial_cosine_in_zero_to_four():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5)
    assert float(discrepancy_loss(f, f.clone())) == pytest.approx(4.0, abs=1e-5)
    assert float(discrepancy_loss(f, -f)) == pytest.approx(0.0, abs=1e-5)
    g = torch.randn(2, 3, 4, 5)
    loss = discrepancy_loss(f, g)
    assert 0.0 <= float(loss) <= 4.0
    cos = F.cosine_similarity(f.flatten(2), g.flatten(2), dim=2)  # (B, D): over space
    torch.testing.assert_close(loss, 2 + 2 * cos.mean())


def test_discrepancy_gradient_reaches_each_student_only_through_its_own_term():
    torch.manual_seed(1)
    f1 = torch.randn(1, 2, 3, 3, requires_grad=True)
    f2 = torch.randn(1, 2, 3, 3, requires_grad=True)
    discrepancy_loss(f1, f2).backward()
    g1 = f1.grad.clone()
    # f1's gradient is that of 1 + mean cos(sg(f2), f1) alone
    a = f1.detach().clone().requires_grad_(True)
    (1 + F.cosine_similarity(f2.detach().flatten(2), a.flatten(2), dim=2).mean()).backward()
    torch.testing.assert_close(g1, a.grad)
    f1b = f1.detach().clone().requires_grad_(True)
    discrepancy_loss(f1b, f2.detach()).backward()
    torch.testing.assert_close(f1b.grad, g1)


def test_consistency_loss_is_zero_on_an_empty_mask_and_keeps_the_graph():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    aug = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = consistency_loss(logits, aug, torch.zeros(1, 4, 4, dtype=torch.long))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(aug.grad, torch.zeros_like(aug))


def test_consistency_loss_matches_a_hand_computation():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 2, 0, 0] = 10.0  # confident, class 2, other label ignored -> kept
    logits[0, 1, 0, 1] = 10.0  # confident, class 1, other label 255 -> kept
    logits[0, 0, 0, 2] = 10.0  # confident but the other student supervises it -> dropped
    logits[0, 1, 0, 3] = 1.0  # not confident -> dropped
    logits.requires_grad_(True)
    aug = torch.tensor([[0.0, 1.0, 2.0, 0.5], [1.0, 0.0, 0.0, 0.5], [3.0, 0.0, 1.0, 0.5]]).view(1, 3, 1, 4)
    aug.requires_grad_(True)
    other = torch.tensor([[[255, 255, 0, 255]]])
    loss = consistency_loss(logits, aug, other)
    logp = aug.detach()[0, :, 0].log_softmax(0)
    expected = -(logp[2, 0] + logp[1, 1]) / 2
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert logits.grad is None or torch.equal(logits.grad, torch.zeros_like(logits))
    assert aug.grad[0, :, 0, 2:].abs().sum() == 0 and aug.grad.abs().sum() > 0
