"""The progressive threshold (docs/method.md#thresholds) and the learning-rate schedule (docs/method.md#optimisation) follow the
original and the training logs."""
import io
import json
import os

import numpy as np
import pytest
import torch

from model.thresholds import cosine_descent, image_thresholds
from utils.schedule import PolyWarmupAdamW, poly_warmup_lr

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
VOC_TARGET = [0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
              0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55]


def test_cosine_descent_matches_the_reference_at_every_step():
    data = np.load(os.path.join(FIXTURES, "components.npz"))
    meta = json.load(open(os.path.join(FIXTURES, "components.json")))
    start = torch.from_numpy(data["cosine_descent.start"])
    target = torch.from_numpy(data["cosine_descent.target"])
    for i, step in enumerate(meta["cosine_descent.steps"]):
        value = cosine_descent(step, meta["cosine_descent.num_steps"], start, target)
        np.testing.assert_allclose(value.numpy(), data[f"cosine_descent.values.{i}"],
                                   rtol=1e-6, err_msg=f"step {step}")


@pytest.mark.parametrize("n,expected", [(2000, 0.700), (5000, 0.690), (8000, 0.6625),
                                        (11000, 0.625), (14000, 0.5875), (17000, 0.560),
                                        (19999, 0.550)])
def test_voc_thresholds_of_the_spec(n, expected):
    tau = cosine_descent(n - 2000, 18000, 0.70, torch.tensor(VOC_TARGET))
    assert float(tau[4]) == pytest.approx(expected, abs=6e-4)
    assert float(tau[0]) == pytest.approx(0.70)


@pytest.mark.parametrize("n,expected", [(12000, 0.65), (32000, 0.630), (46000, 0.600),
                                        (60000, 0.570), (79999, 0.55)])
def test_coco_thresholds_of_the_spec(n, expected):
    assert cosine_descent(n - 12000, 68000, 0.65, 0.55) == pytest.approx(expected, abs=1e-3)


def test_thresholds_descend_monotonically_and_stay_at_the_ends():
    target = torch.tensor(VOC_TARGET)
    values = torch.stack([cosine_descent(s, 18000, 0.7, target) for s in range(-500, 19000, 250)])
    assert (values[1:] <= values[:-1]).all()
    assert torch.equal(cosine_descent(-3, 18000, 0.7, target), torch.full((20,), 0.7))
    assert torch.equal(cosine_descent(10 ** 6, 18000, 0.7, target), target)
    assert isinstance(cosine_descent(5, 10, 0.7, 0.5), float)


def test_image_threshold_is_the_maximum_over_present_classes():
    tau = torch.tensor([0.70, 0.55, 0.60, 0.58])
    y = torch.tensor([[0.0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    out = image_thresholds(tau, y)
    assert out.shape == (4,)
    torch.testing.assert_close(out, torch.tensor([0.58, 0.70, 0.60, 0.70]))


@pytest.mark.parametrize("logged_iter,max_iters,expected", [(200, 20000, "7.960e-06"),
                                                            (1600, 20000, "5.566e-05"),
                                                            (20000, 20000, "8.077e-09"),
                                                            (80000, 80000, "2.319e-09")])
def test_logged_learning_rates_are_those_of_step_iter_minus_one(logged_iter, max_iters, expected):
    assert "%.3e" % poly_warmup_lr(logged_iter - 1, 6e-5, max_iters) == expected


def test_warm_up_is_linear_then_the_rate_drops_to_the_poly_curve():
    assert poly_warmup_lr(0, 6e-5, 20000) == pytest.approx(6e-11)
    assert poly_warmup_lr(750, 6e-5, 20000) == pytest.approx(3e-5, rel=1e-5)
    assert poly_warmup_lr(1499, 6e-5, 20000) == pytest.approx(6e-5 * 1499 / 1500, rel=1e-5)
    assert poly_warmup_lr(1500, 6e-5, 20000) == pytest.approx(6e-5 * (1 - 1500 / 20000) ** 0.9)
    assert poly_warmup_lr(1500, 6e-5, 20000) == pytest.approx(5.59e-5, abs=5e-8)
    assert poly_warmup_lr(25000, 6e-5, 20000) == poly_warmup_lr(19999, 6e-5, 20000)


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = PolyWarmupAdamW([{"params": [model.weight], "lr": 6e-5},
                           {"params": [model.bias], "lr": 6e-4}], lr=6e-5, max_iters=100,
                          warmup_iters=10)
    return model, opt


def _train_step(model, opt):
    opt.zero_grad()
    model(torch.ones(4, 3)).pow(2).sum().backward()
    opt.step()


def test_optimizer_is_adamw_with_the_spec_defaults_and_per_group_rates():
    model, opt = _model_and_optimizer()
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
        assert group["weight_decay"] == 0.01
    for _ in range(3):
        _train_step(model, opt)
    assert opt.global_step == 3
    for group, base in zip(opt.param_groups, (6e-5, 6e-4)):
        assert group["initial_lr"] == base
        assert group["lr"] == poly_warmup_lr(2, base, 100, warmup_iters=10)


def test_global_step_survives_a_state_dict_round_trip():
    model, opt = _model_and_optimizer()
    for _ in range(12):
        _train_step(model, opt)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # as a checkpoint would (state_dict() aliases live tensors)
    buffer.seek(0)
    state = torch.load(buffer)
    model2, opt2 = _model_and_optimizer()
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(state)
    assert opt2.global_step == 12
    _train_step(model, opt)
    _train_step(model2, opt2)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    torch.testing.assert_close(model2.weight, model.weight, rtol=0, atol=0)
