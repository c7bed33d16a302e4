"""The training iteration's shortcuts give the straightforward computation's result.

``dupl_step`` reuses the training forward's token maps for the scale-1.0 CAMs and stops the CAM
passes at the aux block while only the aux CAM is used; the reference here runs every CAM pass in
full (``multiscale_cam`` without ``maps``, both layers) and must give the same losses and labels.
"""
import pytest
import torch

import model.dupl as dupl
from model.dupl import coco_config, dupl_step, voc_config
from model.network import DualStudentNet
from model.par import PAR


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


def _step(net, cfg, n, monkeypatch=None, full=False, keep_visuals=False):
    if full:
        monkeypatch.setattr(dupl, "multiscale_cam", _full_cams)
    images, labels, boxes = _batch(k=cfg.num_classes - 1)
    out = dupl_step(net, net, images, labels, boxes, n, cfg, PAR(), torch.Generator().manual_seed(3),
                    keep_visuals=keep_visuals, max_present=2)
    if full:
        monkeypatch.setattr(dupl, "multiscale_cam", FULL)
    return out


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
    cfg = voc_config(**sched) if config == "voc" else coco_config(**sched, ptc_after=30, dis_after=20,
                                                                  aux_seg_until=30)
    fast = _step(net, cfg, n)
    full = _step(net, cfg, n, monkeypatch, full=True)
    for k in fast.terms:
        torch.testing.assert_close(fast.terms[k], full.terms[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)


def test_visuals_hold_both_cams_and_labels_equal_to_the_full_computation(monkeypatch):
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    cfg = voc_config(max_iters=60, cam_iters=20, gmm_iters=40, descent_start=20, descent_steps=40)
    fast = _step(net, cfg, 25, keep_visuals=True)
    full = _step(net, cfg, 25, monkeypatch, full=True, keep_visuals=True)
    assert len(fast.cams) == 4 and all(c is not None for c in fast.cams)
    for a, b in zip(fast.cams, full.cams):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(fast.pseudo_labels, full.pseudo_labels):
        assert (a != b).float().mean() < 1e-3


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
    cfg = voc_config(max_iters=60, cam_iters=20, gmm_iters=40, descent_start=20, descent_steps=40)
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
