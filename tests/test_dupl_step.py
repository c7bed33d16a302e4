"""The training iteration's shortcuts give the straightforward computation's result.

``dupl_step`` reuses the training forward's token maps for the scale-1.0 CAMs and stops the CAM
passes at the aux block while only the aux CAM is used; the reference here runs every CAM pass in
full (``multiscale_cam`` without ``maps``, both layers) and must give the same losses and labels.
"""
import pytest
import torch

import model.dupl as dupl
from model.dupl import Batch, dupl_step
from model.network import DualStudentNet
from model.par import PAR
from model.schedule import paper_config
from engine.train_step import TrainingStep, release_idle_gradients, training_visuals


def _full_cams(student, x, scales, maps=None, final=True):
    return FULL(student, x, scales)


FULL = dupl.multiscale_cam


def _batch(seed=0, b=2, size=64, k=20):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=g)
    labels = torch.zeros(b, k)
    labels[0, 2] = labels[1, 5] = labels[1, 11] = 1
    boxes = torch.tensor([[0, size, 0, size], [8, size - 8, 4, size]])
    return images, labels, boxes


def _step(net, cfg, n, monkeypatch=None, full=False, visuals=False):
    """The step's output; with ``visuals`` also what the engine shows of it (CAMs, labels)."""
    if full:
        monkeypatch.setattr(dupl, "multiscale_cam", _full_cams)
    batch = Batch(*_batch(k=cfg.num_classes - 1), max_present=2)
    par = PAR()
    out = dupl_step(net, batch, n, cfg, par, torch.Generator().manual_seed(3))
    shown = training_visuals(net, batch, out, n, cfg, par) if visuals else None
    if full:
        monkeypatch.setattr(dupl, "multiscale_cam", FULL)
    return (out, shown) if visuals else out


@pytest.mark.parametrize("config,n", [
    ("voc", 5),        # phase A: PTC from the aux CAM only
    ("voc", 25),       # phase B: labels from the final CAM
    ("voc", 45),       # phase C: GMM filter and consistency
    ("coco", 25),      # COCO after cam_iters: labels from the aux CAM, no PTC yet
])
def test_fast_cam_paths_give_the_full_computation_losses(monkeypatch, config, n):
    torch.manual_seed(0)
    classes = 21 if config == "voc" else 81
    net = DualStudentNet("deit_tiny_patch16_224", classes, aux_layer=-3 if config == "voc" else 9)
    sched = dict(max_iters=60, cam_iters=20, gmm_iters=40, descent_start=20, descent_steps=40)
    cfg = paper_config("voc", **sched) if config == "voc" else paper_config("coco", **sched, ptc_after=30, dis_after=20,
                                                                  aux_seg_until=30)
    fast = _step(net, cfg, n)
    full = _step(net, cfg, n, monkeypatch, full=True)
    for k in fast.terms:
        torch.testing.assert_close(fast.terms[k], full.terms[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)


def test_visuals_hold_both_cams_and_labels_equal_to_the_full_computation(monkeypatch):
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    cfg = paper_config("voc", max_iters=60, cam_iters=20, gmm_iters=40, descent_start=20, descent_steps=40)
    _, (fast_cams, fast_labels) = _step(net, cfg, 25, visuals=True)
    _, (full_cams, full_labels) = _step(net, cfg, 25, monkeypatch, full=True, visuals=True)
    assert len(fast_cams) == 4 and all(c is not None for c in fast_cams)
    for a, b in zip(fast_cams, full_cams):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(fast_labels, full_labels):
        assert (a != b).float().mean() < 1e-3


@pytest.mark.parametrize("n", [5, 20])
def test_visuals_add_what_the_step_left_out_as_a_step_that_needs_it_computes_it(n):
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    cfg = paper_config("voc", max_iters=60, cam_iters=20, gmm_iters=40)
    assert cfg.weights(n)["seg"] == 0          # phase A, and the boundary n == cam_iters
    out, (cams, labels) = _step(net, cfg, n, visuals=True)
    # the step itself computed the aux CAMs only (for the patch-token contrast) and no labels
    assert out.pseudo_labels is None and all(cam is None for cam, _ in out.cams)
    # the same weights and thresholds with the segmentation loss on: the step's own CAMs and labels
    seg_on = paper_config("voc", max_iters=60, cam_iters=19, gmm_iters=40, descent_start=20, descent_steps=40)
    ref = _step(net, seg_on, 20)
    assert len(cams) == 4
    for a, b in zip(cams, [c for pair in ref.cams for c in pair]):
        assert torch.equal(a, b)
    if cfg.phase(n) == "A":
        assert labels is None
    else:
        assert len(labels) == 2 and all(torch.equal(a, b) for a, b in zip(labels, ref.pseudo_labels))


def _last_block_calls(net, cfg, n):
    calls = []
    hooks = [s.encoder.blocks[-1].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
             for s in net.students]
    out = _step(net, cfg, n)
    out.loss.backward()
    for h in hooks:
        h.remove()
    return calls


def test_phase_a_cams_stop_at_the_aux_block_and_reuse_the_forward():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    cfg = paper_config("voc", max_iters=60, cam_iters=20, gmm_iters=40, descent_start=20, descent_steps=40)
    # phase A: the last block runs in the training forward only (2 images per student)
    assert _last_block_calls(net, cfg, 5) == [2, 2]
    # phase B, per student: training forward, the mirror at scale 1.0, image + mirror at 0.5 and 1.5
    assert sorted(_last_block_calls(net, cfg, 25)) == [2, 2, 2, 2, 4, 4, 4, 4]


def test_aux_only_cam_equals_the_aux_cam_of_the_full_pass():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    x = torch.randn(2, 3, 48, 64)
    cam, cam_aux = dupl.multiscale_cam(net.branch1, x, final=False)
    assert cam is None
    torch.testing.assert_close(cam_aux, dupl.multiscale_cam(net.branch1, x)[1], rtol=0, atol=0)


def test_the_engine_step_keeps_idle_decoders_in_the_graph_with_zero_gradients():
    # before the segmentation loss starts the decoders take no part in the loss; the engine's
    # TrainingStep keeps them in the graph (DDP needs every parameter), with the same loss
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    cfg = paper_config("voc", max_iters=60, cam_iters=20, gmm_iters=40)
    batch = Batch(*_batch(), max_present=2)
    out = TrainingStep(net, cfg)(batch, 5, PAR(), torch.Generator().manual_seed(3))
    assert torch.equal(out.loss, _step(net, cfg, 5).loss)
    out.loss.backward()
    assert [k for k, p in net.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(not p.grad.any() for s in net.students for p in s.decoder.parameters())
    assert any(p.grad.any() for p in net.branch1.encoder.parameters())


def test_the_step_names_the_terms_in_its_loss_and_only_their_parts_keep_gradients():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21, backbone_args="depth=2,embed_dim=48,num_heads=2")
    cfg = paper_config("voc", max_iters=60, cam_iters=20, gmm_iters=40)
    assert _step(net, cfg, 5).active == ("cls", "ptc", "dis")
    assert _step(net, cfg, 45).active == ("cls", "ptc", "seg", "dis", "reg")
    assert _step(net, paper_config("voc", max_iters=60, cam_iters=20, gmm_iters=40, w_dis=0.0), 25).active == \
        ("cls", "ptc", "seg")
    for active, decoder_kept in ((("cls", "ptc", "dis"), False), (("cls", "reg"), True)):
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        release_idle_gradients(net, active)
        assert all((p.grad is not None) == decoder_kept for s in net.students for p in s.decoder.parameters())
        assert all(p.grad is not None for s in net.students for p in s.encoder.parameters())


def test_each_stage_is_a_profiler_range():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    cfg = paper_config("voc", max_iters=60, cam_iters=20, gmm_iters=40)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _step(net, cfg, 45)          # phase C: every stage
    names = {e.name for e in prof.events() if e.name.startswith("dupl/")}
    assert names == {f"dupl/{s}" for s in ("strong_view", "forward", "cams", "ptc", "par_refine", "gmm",
                                             "consistency")}
