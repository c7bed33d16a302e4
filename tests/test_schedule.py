"""The phases and loss weights (docs/method.md#losses-and-phases), the progressive threshold
(docs/method.md#thresholds) and the learning-rate schedule (docs/method.md#optimisation) follow the
original and the training logs."""
import io
import json
import os

import numpy as np
import pytest
import torch

from model.schedule import DuPLConfig, paper_config
from model.thresholds import cosine_descent, image_thresholds
from engine.optim import PolyWarmupAdamW, poly_warmup_lr
from engine.train_args import config_from_args, get_args_parser

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


def _boundaries(cfg):
    return dict(dis_after=cfg.dis_after, ptc_after=cfg.ptc_after, aux_seg_until=cfg.aux_seg_until,
                descent_start=cfg.descent_start, descent_steps=cfg.descent_steps)


def test_paper_boundaries_come_from_cam_iters_and_max_iters():
    assert _boundaries(paper_config("coco")) == dict(dis_after=8000, ptc_after=12000, aux_seg_until=12000,
                                              descent_start=12000, descent_steps=68000)
    assert _boundaries(paper_config("voc")) == dict(dis_after=-1, ptc_after=-1, aux_seg_until=-1,
                                             descent_start=2000, descent_steps=18000)
    assert paper_config("voc") == DuPLConfig()


def test_a_shortened_coco_schedule_keeps_the_paper_proportions():
    cfg = paper_config("coco", max_iters=400, cam_iters=40, gmm_iters=160)
    assert _boundaries(cfg) == dict(dis_after=40, ptc_after=60, aux_seg_until=60, descent_start=60,
                                    descent_steps=340)
    # round half to even, as the engine has always rounded 1.5 * cam_iters: 7.5 -> 8, 4.5 -> 4
    assert paper_config("coco", max_iters=20, cam_iters=5, gmm_iters=10).ptc_after == 8
    assert paper_config("coco", max_iters=20, cam_iters=3, gmm_iters=10).aux_seg_until == 4
    for cam_iters in range(0, 60):
        for max_iters in (cam_iters * 2, cam_iters * 10 + 7):
            late = int(round(cam_iters * 1.5))
            got = paper_config("coco", max_iters=max_iters, cam_iters=cam_iters, gmm_iters=cam_iters)
            assert _boundaries(got) == dict(dis_after=cam_iters, ptc_after=late, aux_seg_until=late,
                                            descent_start=late, descent_steps=max_iters - late)
            voc = paper_config("voc", max_iters=max_iters, cam_iters=cam_iters, gmm_iters=cam_iters)
            assert (voc.descent_start, voc.descent_steps) == (cam_iters, max_iters - cam_iters)


def test_the_flags_give_the_derived_schedule():
    flags = ["--max_iters", "400", "--cam_iters", "40", "--gmm_iters", "160"]
    assert config_from_args(get_args_parser("coco").parse_args(flags), "coco") == \
        paper_config("coco", max_iters=400, cam_iters=40, gmm_iters=160)
    assert config_from_args(get_args_parser("voc").parse_args(flags), "voc") == \
        paper_config("voc", max_iters=400, cam_iters=40, gmm_iters=160)


def test_phases_and_weights_are_off_by_one_at_the_boundaries_as_in_the_original():
    voc = paper_config("voc", max_iters=24, cam_iters=6, gmm_iters=12)
    # n == cam_iters: phase B already (n < cam_iters is false), the segmentation weight still 0
    assert [voc.phase(n) for n in (5, 6, 7)] == ["A", "B", "B"]
    assert [voc.weights(n)["seg"] for n in (5, 6, 7)] == [0, 0, 0.2]
    # n == gmm_iters: phase C (the GMM filter), the consistency weight still 0 on VOC
    assert [voc.phase(n) for n in (11, 12, 13)] == ["B", "C", "C"]
    assert [voc.weights(n)["reg"] for n in (11, 12, 13)] == [0, 0, 0.05]
    assert voc.weights(0)["ptc"] == 0.2 and voc.weights(0)["dis"] == 0.1
    # COCO: late = round(1.5 * 4) = 6
    coco = paper_config("coco", max_iters=40, cam_iters=4, gmm_iters=16)
    assert [coco.phase(n) for n in (3, 4, 5)] == ["A", "B", "B"]
    assert [coco.weights(n)["seg"] for n in (3, 4, 5)] == [0, 0, 0.2]
    assert [coco.weights(n)["dis"] for n in (4, 5)] == [0, 0.05]
    assert [coco.weights(n)["ptc"] for n in (6, 7)] == [0, 0.2]
    # COCO weights the consistency loss from n == gmm_iters itself: no off-by-one there
    assert [coco.phase(n) for n in (15, 16)] == ["B", "C"]
    assert [coco.weights(n)["reg"] for n in (15, 16)] == [0, 0.05]
    # the threshold starts to descend after late: at n == late it still has its start value
    assert torch.equal(coco.class_thresholds(6), torch.full((80,), 0.65))
    assert (coco.class_thresholds(7) < 0.65).all()



def test_each_loss_term_is_declared_once_with_parts_a_student_has():
    from model.network import Student
    from model.schedule import idle_parts
    from model.settings import LOSS_NAMES, LOSS_TERMS, STUDENT_PARTS
    assert LOSS_NAMES == ("cls", "ptc", "seg", "dis", "reg")
    assert [t.log_name for t in LOSS_TERMS] == ["cls_loss", "ptc_loss", "seg_loss", "sim_loss", "reg_loss"]
    cfg = paper_config("voc", max_iters=24, cam_iters=6, gmm_iters=12)
    assert list(cfg.weights(20)) == list(LOSS_NAMES)
    for t in LOSS_TERMS:
        assert set(t.trains) <= set(STUDENT_PARTS)
        assert t.weight is None or cfg.weights(20)[t.name] == getattr(cfg, t.weight)
    student = Student("deit_tiny_patch16_224", 21, backbone_args="depth=2,embed_dim=48,num_heads=2")
    assert all(any(p.requires_grad for p in getattr(student, part).parameters()) for part in STUDENT_PARTS)
    # the parts no term in the loss trains: the decoders while only cls / ptc / dis are on, none
    # once a term on the decoder (seg or reg) is in the loss
    assert idle_parts(("cls", "ptc", "dis")) == ("decoder",)
    assert idle_parts(("cls", "reg")) == ()
    assert idle_parts(LOSS_NAMES) == ()
