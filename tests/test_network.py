"""The network reproduces the original implementation's outputs from its checkpoint layout."""
import json
import os

import numpy as np
import pytest
import torch

from model.backbone import Backbone, resize_pos_embed, vit_token_maps
from model.cam import multiscale_cam, normalize_cam, spatial_extreme
from model.network import DualStudentNet, load_network
from utils.errors import UserError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")


def _reference_state():
    meta = json.load(open(os.path.join(FIXTURES, "compat.json")))
    state = {}
    for i, (key, shape) in enumerate(meta["keys_shapes"]):
        value = torch.randn(shape, generator=torch.Generator().manual_seed(i)) * 0.05
        parts = key.split(".")
        if parts[-1] == "weight" and "norm" in parts[-2]:
            value = 1 + 2 * value
        state[key] = value
    return meta, state


@pytest.fixture(scope="module")
def reference():
    meta, state = _reference_state()
    torch.manual_seed(0)
    net = DualStudentNet(meta["backbone"], meta["num_classes"], meta["aux_layer"]).eval()
    load_network(net, {"model": {"module." + k: v for k, v in state.items()}})
    return net, np.load(os.path.join(FIXTURES, "compat.npz"))


def test_checkpoint_keys_are_the_originals_in_the_same_order():
    meta, _ = _reference_state()
    net = DualStudentNet(meta["backbone"], meta["num_classes"], meta["aux_layer"])
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == meta["keys_shapes"]


@pytest.mark.parametrize("branch", [1, 2])
def test_forward_matches_the_reference_outputs(reference, branch):
    net, data = reference
    x = torch.from_numpy(data["input"])
    with torch.no_grad():
        out = net.students[branch - 1](x)
    for name, value in zip(("cls", "seg", "fmap", "cls_aux"), out):
        np.testing.assert_allclose(value.numpy(), data[f"branch{branch}.{name}"], rtol=1e-4, atol=1e-4,
                                   err_msg=name)


@pytest.mark.parametrize("branch", [1, 2])
def test_raw_and_multiscale_cams_match_the_reference(reference, branch):
    net, data = reference
    x = torch.from_numpy(data["input"])
    student = net.students[branch - 1]
    with torch.no_grad():
        cam, cam_aux = student.raw_cams(x)
    np.testing.assert_allclose(cam.numpy(), data[f"cam_only_branch{branch}.cam"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cam_aux.numpy(), data[f"cam_only_branch{branch}.cam_aux"], rtol=1e-4, atol=1e-4)
    cam, cam_aux = multiscale_cam(student, x, (1.0, 0.5, 1.5))
    np.testing.assert_allclose(cam.numpy(), data[f"msc_branch{branch}.cam"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cam_aux.numpy(), data[f"msc_branch{branch}.cam_aux"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("branch", [1, 2])
def test_cams_reusing_the_forward_maps_match_the_reference_and_the_full_path(reference, branch):
    net, data = reference
    x = torch.from_numpy(data["input"])
    student = net.students[branch - 1]
    seen = []
    hook = student.encoder.patch_embed.proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    out = student(x)
    seen.clear()
    cam, cam_aux = multiscale_cam(student, x, (1.0, 0.5, 1.5), maps=(out.fmap, out.fmap_aux))
    hook.remove()
    b, _, h, w = x.shape
    # scale 1.0 passes only the mirror images; 0.5 and 1.5 pass images and mirrors
    assert [tuple(s) for s in seen] == [(b, 3, h, w), (2 * b, 3, h // 2, w // 2),
                                        (2 * b, 3, int(1.5 * h), int(1.5 * w))]
    np.testing.assert_allclose(cam.numpy(), data[f"msc_branch{branch}.cam"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cam_aux.numpy(), data[f"msc_branch{branch}.cam_aux"], rtol=1e-4, atol=1e-4)
    full, full_aux = multiscale_cam(student, x, (1.0, 0.5, 1.5))
    torch.testing.assert_close(cam, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(cam_aux, full_aux, rtol=0, atol=1e-5)
    assert out.fmap_aux.shape == out.fmap.shape


def test_position_embedding_resize_is_bicubic_without_antialias():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    for grid in [(14, 14), (28, 28), (42, 42), (6, 8), (31, 23)]:
        out = resize_pos_embed(pos, grid, (14, 14))
        assert out.shape == (1, 1 + grid[0] * grid[1], 8)
        assert torch.equal(out[:, 0], pos[:, 0])
        ref = torch.nn.functional.interpolate(pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2),
                                              size=grid, mode="bicubic", align_corners=False)
        torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 8))
    smoothed = torch.nn.functional.interpolate(
        pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(6, 8), mode="bicubic",
        align_corners=False, antialias=True)
    assert not torch.allclose(resize_pos_embed(pos, (6, 8), (14, 14))[:, 1:],
                              smoothed.permute(0, 2, 3, 1).reshape(1, -1, 8))


def test_any_input_size_gives_floor_of_size_over_16_tokens():
    torch.manual_seed(0)
    vit = Backbone("deit_tiny_patch16_224").timm
    for h, w in [(224, 224), (448, 448), (375, 500), (100, 37)]:
        fmap, aux = vit_token_maps(vit, torch.randn(1, 3, h, w), -3)
        assert fmap.shape == aux.shape == (1, 192, h // 16, w // 16)


def test_aux_map_is_block_nine_without_norm_and_final_map_is_normed():
    torch.manual_seed(0)
    vit = Backbone("deit_tiny_patch16_224").timm.eval()
    x = torch.randn(2, 3, 64, 80)
    seen = {}
    vit.blocks[9].register_forward_hook(lambda m, i, o: seen.setdefault("aux", o))
    vit.norm.register_forward_hook(lambda m, i, o: seen.setdefault("final", o))
    fmap, aux = vit_token_maps(vit, x, -3)
    torch.testing.assert_close(aux, seen["aux"][:, 1:].transpose(1, 2).reshape(2, 192, 4, 5))
    torch.testing.assert_close(fmap, seen["final"][:, 1:].transpose(1, 2).reshape(2, 192, 4, 5))
    torch.testing.assert_close(vit_token_maps(vit, x, 9)[1], aux)


def test_position_embedding_is_frozen_and_gets_no_gradient():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    out = net(torch.randn(1, 3, 32, 48))
    sum(o.seg.sum() + o.cls.sum() + o.cls_aux.sum() for o in out).backward()
    for s in net.students:
        assert not s.encoder.pos_embed.requires_grad and s.encoder.pos_embed.grad is None
        assert s.encoder.cls_token.grad is not None


def test_outputs_have_the_documented_shapes():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    x = torch.randn(2, 3, 64, 96)
    outs, aug = net(x, torch.randn(2, 3, 48, 64))
    for o in outs:
        assert o.cls.shape == o.cls_aux.shape == (2, 20)
        assert o.seg.shape == (2, 21, 4, 6) and o.fmap.shape == (2, 192, 4, 6)
    assert [a.shape for a in aug] == [(2, 21, 3, 4)] * 2
    cam, cam_aux = multiscale_cam(net.branch1, x)
    assert cam.shape == cam_aux.shape == (2, 20, 64, 96)
    assert cam.min() >= 0 and cam.max() <= 1 and cam_aux.min() >= 0 and cam_aux.max() <= 1
    assert torch.allclose(cam.amax(dim=(2, 3)), torch.ones(2, 20), atol=1e-4)


def test_normalize_cam_maps_each_image_and_class_to_unit_range():
    cam = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]]])
    torch.testing.assert_close(normalize_cam(cam), torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]]) * 8 / (8 + 1e-5))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_spatial_extremes_are_those_of_each_map_in_either_layout(layout):
    cam = torch.randn(3, 7, 13, 11, generator=torch.Generator().manual_seed(0))
    cam[1, 2, 4, 5] = float("nan")                       # a NaN map stays NaN, as amin / amax
    x = cam.contiguous(memory_format=layout)
    for largest, name in ((True, "amax"), (False, "amin")):
        got = spatial_extreme(x, largest)
        want = getattr(cam, name)(dim=(2, 3), keepdim=True)
        assert got.shape == (3, 7, 1, 1)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    want = (cam - cam.amin(dim=(2, 3), keepdim=True))
    want = want / (want.amax(dim=(2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(normalize_cam(x), want.contiguous(memory_format=layout), rtol=0, atol=0,
                               equal_nan=True)


def test_students_are_independent_networks():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    assert not torch.equal(net.branch1.classifier.weight, net.branch2.classifier.weight)
    assert net.branch1.encoder.cls_token.data_ptr() != net.branch2.encoder.cls_token.data_ptr()


def test_parameter_groups_follow_the_paper():
    torch.manual_seed(0)
    net = DualStudentNet("deit_tiny_patch16_224", 21)
    groups = net.param_groups(6e-5)
    assert [g["lr"] for g in groups] == pytest.approx([6e-5, 6e-5, 6e-4, 6e-4], rel=1e-12)
    assert all(g["weight_decay"] == 0.01 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    names = {id(p): n for n, p in net.named_parameters()}
    assert all("encoder" in names[id(p)] and "norm" not in names[id(p)] for p in groups[0]["params"])
    assert all("encoder" in names[id(p)] and "norm" in names[id(p)] for p in groups[1]["params"])
    assert sorted(names[id(p)] for p in groups[2]["params"]) == [
        "branch1.aux_classifier.weight", "branch1.classifier.weight",
        "branch2.aux_classifier.weight", "branch2.classifier.weight"]
    assert all("decoder" in names[id(p)] for p in groups[3]["params"]) and len(groups[3]["params"]) == 6


def test_own_checkpoint_round_trips_through_a_file(tmp_path):
    torch.manual_seed(0)
    a = DualStudentNet("deit_tiny_patch16_224", 21)
    torch.save({"model": a.state_dict(), "step": 5}, tmp_path / "ck.pth")
    torch.manual_seed(1)
    b = DualStudentNet("deit_tiny_patch16_224", 21)
    load_network(b, str(tmp_path / "ck.pth"))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_checkpoint_of_other_class_count_or_backbone_is_refused(tmp_path):
    torch.manual_seed(0)
    coco = DualStudentNet("deit_tiny_patch16_224", 81)
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    voc = DualStudentNet("deit_tiny_patch16_224", 21)
    with pytest.raises(UserError, match="trained with 81 classes but this network has 21"):
        load_network(voc, str(tmp_path / "coco.pth"))
    small = DualStudentNet("deit_small_patch16_224", 21)
    with pytest.raises(UserError, match=r"holds a ViT-tiny/16 .* but --backbone deit_small_patch16_224"):
        load_network(small, voc.state_dict())
    with pytest.raises(UserError, match="does not exist"):
        load_network(voc, str(tmp_path / "none.pth"))
    (tmp_path / "cut.pth").write_bytes((tmp_path / "coco.pth").read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_network(voc, str(tmp_path / "cut.pth"))


def test_local_pretrained_file_loads_in_deit_and_bare_formats(tmp_path):
    torch.manual_seed(3)
    src = Backbone("deit_tiny_patch16_224").timm
    torch.save({"model": src.state_dict()}, tmp_path / "deit.pth")
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    state["head.weight"], state["head.bias"] = torch.zeros(21843, 192), torch.zeros(21843)
    torch.save(state, tmp_path / "bare.pth")
    for name in ("deit.pth", "bare.pth"):
        vit = Backbone("deit_tiny_patch16_224", pretrained_path=str(tmp_path / name)).timm
        assert torch.equal(vit.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
        assert not vit.pos_embed.requires_grad
    with pytest.raises(UserError, match="does not hold weights of this backbone"):
        Backbone("deit_small_patch16_224", pretrained_path=str(tmp_path / "deit.pth"))
    with pytest.raises(UserError, match="--pretrained_path .* does not exist"):
        Backbone("deit_tiny_patch16_224", pretrained_path=str(tmp_path / "none.pth"))


def test_unknown_or_non_plain_backbone_is_refused():
    with pytest.raises(UserError, match="is not a timm model"):
        Backbone("deit_huge_patch99")
    with pytest.raises(UserError, match="not a ViT-family encoder"):
        Backbone("resnet18")


def test_pretrained_without_network_says_how_to_get_the_weights():
    import subprocess
    import sys
    code = ("from model.backbone import Backbone\n"
            "from utils.errors import exit_on_user_error\n"
            "exit_on_user_error(lambda: Backbone('deit_tiny_patch16_224', pretrained=True))()\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot get the ImageNet weights") and "--pretrained_path" in last
