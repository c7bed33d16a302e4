"""Encoder families beyond the paper's ViT/DeiT: DINOv2 (with and without registers), DINOv3,
CLIP, SigLIP and EVA-02, as reduced random-weight models (timm's depth / width overrides).

Each family gives maps of the right grid from inputs that are not a multiple of its patch, with
its prefix tokens dropped (checked against timm's own ``forward_features``), trains through all
three phases with a gradient on every trainable encoder parameter, gives the same loss and
gradients with gradient checkpointing, and round-trips a checkpoint through both evaluations
without a backbone flag.
"""
import logging
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import eval_cam_voc
import eval_seg_voc
import train_final_coco
import train_final_voc
import visualize_cams
from datasets import synthetic
from utils.errors import UserError
from datasets.layout import voc_layout
from datasets.lists import ensure_lists
from datasets.segmentation import EvalDataset
from utils.input_stats import PAPER_STATS, InputStats
from model import backbone as bb
from model.backbone import (Backbone, default_aux_layer, describe_state, input_stats, parse_backbone_args,
                            pretrained_name, vit_token_maps)
from model.cam import multiscale_cam
from model.dupl import Batch, dupl_step
from model.network import DualStudentNet, load_network
from model.par import PAR
from model.schedule import paper_config
from engine import train_args, train_engine
from utils.checkpoint import read_checkpoint
from utils.distributed import DistInfo
from engine.inference import load_model
from utils.metric import ConfusionMatrix

SMALL = "depth=3,embed_dim=48,num_heads=2"
# name, family, patch, prefix tokens (class + registers)
FAMILIES = [
    ("vit_small_patch14_reg4_dinov2", "dinov2", 14, 5),
    ("vit_small_patch14_dinov2", "dinov2", 14, 1),
    ("vit_small_patch16_dinov3", "dinov3", 16, 5),
    ("vit_base_patch16_clip_224", "clip", 16, 1),
    ("vit_base_patch16_siglip_224", "siglip", 16, 0),
    ("eva02_tiny_patch14_224", "eva02", 14, 1),
]
NAMES = [f[0] for f in FAMILIES]


def _net(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return DualStudentNet(name, 21, backbone_args=SMALL, **kwargs)


def _batch(size, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=g)
    labels = torch.zeros(b, 20)
    labels[0, 3] = labels[1, 7] = labels[1, 11] = 1
    boxes = torch.tensor([[0, size, 0, size], [4, size, 0, size - 6]], dtype=torch.int16)
    return images, labels, boxes


def test_aux_block_follows_depth_and_the_paper_keeps_block_nine():
    assert [default_aux_layer(d) for d in (12, 24, 40, 32, 6, 4, 3, 2, 1)] == [9, 18, 30, 24, 4, 2, 1, 0, 0]
    for dataset in ("voc", "coco"):   # both scripts' default is the rule: block 9 of the paper's 12
        args = train_args.get_args_parser(dataset).parse_args([])
        assert args.aux_layer is None
        net = DualStudentNet("deit_tiny_patch16_224", 21, args.aux_layer, backbone_args="embed_dim=24,num_heads=1")
        assert net.aux_layer == 9 == net.branch2.aux_layer
    assert _net("vit_small_patch14_reg4_dinov2").aux_layer == 1    # 3 blocks
    with pytest.raises(UserError, match="--aux_layer 3 is outside the 3 blocks"):
        DualStudentNet("vit_small_patch14_reg4_dinov2", 21, 3, backbone_args=SMALL)


@pytest.mark.parametrize("name,family,patch,prefix", FAMILIES)
def test_maps_cams_and_logits_have_the_grid_of_the_patch(name, family, patch, prefix):
    net = _net(name).eval()
    student = net.branch1
    assert (student.backbone.family, student.patch_size, student.backbone.prefix_tokens) == (family, patch, prefix)
    assert not student.backbone.paper_path and student.backbone.width == 48
    assert student.classifier.in_channels == student.decoder.conv6.in_channels == 48
    for h, w in ((4 * patch, 4 * patch), (75, 61)):    # a multiple of the patch, and not one
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            outs, aug = net(x, torch.randn(2, 3, h * 3 // 4, w * 3 // 4))
            cam, cam_aux = multiscale_cam(student, x)
        grid = (h // patch, w // patch)
        for o in outs:
            assert o.cls.shape == o.cls_aux.shape == (2, 20)
            assert o.seg.shape == (2, 21, *grid) and o.fmap.shape == o.fmap_aux.shape == (2, 48, *grid)
        assert [a.shape[-2:] for a in aug] == [((h * 3 // 4) // patch, (w * 3 // 4) // patch)] * 2
        assert cam.shape == cam_aux.shape == (2, 20, h, w)
        assert 0 <= float(cam.min()) and float(cam.max()) <= 1 and float(cam_aux.max()) <= 1


@pytest.mark.parametrize("name,family,patch,prefix", FAMILIES)
def test_maps_are_timms_tokens_without_prefix_and_without_the_remainder(name, family, patch, prefix):
    """The final map is timm's ``forward_features`` (a separate code path) minus the prefix tokens,
    after the final LayerNorm (EVA-02's sits in ``fc_norm``); the aux map is the aux block's output;
    pixels past the last whole patch do not change anything."""
    student = _net(name).branch1.eval()
    enc = student.encoder
    seen = {}
    enc.blocks[student.aux_layer].register_forward_hook(lambda m, i, o: seen.__setitem__("aux", o))
    x = torch.randn(1, 3, 3 * patch + 5, 2 * patch + 9)
    cut = x[:, :, :3 * patch, :2 * patch]
    with torch.no_grad():
        fmap, aux = student.token_maps(x)
        ref = enc.forward_features(cut)
        ref_aux = seen["aux"]
        fmap_cut, aux_cut = student.token_maps(cut)
    if family == "eva02":
        ref = enc.fc_norm(ref)
    assert ref.shape[1] == prefix + 6
    torch.testing.assert_close(fmap, ref[:, prefix:].transpose(1, 2).reshape(1, 48, 3, 2))
    torch.testing.assert_close(aux, ref_aux[:, prefix:].transpose(1, 2).reshape(1, 48, 3, 2))
    assert torch.equal(fmap, fmap_cut) and torch.equal(aux, aux_cut)
    with torch.no_grad():   # the aux-only pass stops at the aux block and gives the same map
        none, aux_only = student.token_maps(x, final=False)
    assert none is None and torch.allclose(aux_only, aux, atol=1e-6)


def test_plain_vits_keep_the_papers_path_and_other_vits_take_timms():
    torch.manual_seed(0)
    plain = DualStudentNet("deit_tiny_patch16_224", 21, backbone_args="depth=2,embed_dim=24,num_heads=1").eval()
    assert plain.branch1.backbone.paper_path and plain.branch1.backbone.family == "vit"
    x = torch.randn(1, 3, 100, 37)
    with torch.no_grad():
        ours = plain.branch1.token_maps(x)
        ref = vit_token_maps(plain.branch1.encoder, x, plain.aux_layer)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    # a distilled DeiT (class + distillation token) and DeiT III (no class slot, LayerScale) take timm's
    for name, prefix in (("deit_tiny_distilled_patch16_224", 2), ("deit3_small_patch16_224", 1)):
        torch.manual_seed(0)
        s = DualStudentNet(name, 21, backbone_args="depth=2,embed_dim=24,num_heads=1").branch1
        assert not s.backbone.paper_path and s.backbone.prefix_tokens == prefix
        assert s(torch.randn(1, 3, 48, 40)).fmap.shape == (1, 24, 3, 2)


@pytest.fixture(scope="module")
def par():
    return PAR()


@pytest.mark.parametrize("name", NAMES)
def test_one_step_of_each_phase_trains_every_encoder_parameter(name, par, one_torch_thread):
    net = _net(name).train()
    cfg = paper_config("voc", max_iters=30, cam_iters=2, gmm_iters=4, descent_start=2, descent_steps=28)
    images, labels, boxes = _batch(64)    # 64 = 4 patches of 16, or 4 of 14 and 8 pixels left over
    for n, phase in ((0, "A"), (3, "B"), (5, "C")):
        assert cfg.phase(n) == phase
        net.zero_grad(set_to_none=True)
        out = dupl_step(net, Batch(images, labels, boxes, max_present=2), n, cfg, par,
                        torch.Generator().manual_seed(0))
        out.loss.backward()
        assert torch.isfinite(out.loss), phase
    assert out.terms["seg"] > 0 and out.terms["ptc"] > 0
    trainable = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    assert [k for k, p in trainable if p.grad is None] == []   # DDP needs no find_unused_parameters
    frozen = {k for k, p in net.named_parameters() if not p.requires_grad}
    assert all(k.split(".")[2] in ("pos_embed", "head", "attn_pool", "fc_norm") for k in frozen), frozen


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2", "eva02_tiny_patch14_224"])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(name, par, one_torch_thread):
    cfg = paper_config("voc", max_iters=30, cam_iters=2, gmm_iters=4, descent_start=2, descent_steps=28)
    images, labels, boxes = _batch(48, seed=1)
    results = []
    for ckpt in (False, True):
        net = _net(name, seed=3, grad_checkpointing=ckpt)
        assert net.branch1.backbone.grad_checkpointing == ckpt
        out = dupl_step(net, Batch(images, labels, boxes, max_present=2), 5, cfg, par,
                        torch.Generator().manual_seed(0))
        out.loss.backward()
        results.append((out.loss.detach(), {k: p.grad for k, p in net.named_parameters() if p.grad is not None}))
    (loss0, g0), (loss1, g1) = results
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_small_patch16_dinov3", "eva02_tiny_patch14_224"])
def test_bf16_autocast_runs_a_phase_c_step(name, par, one_torch_thread):
    net = _net(name)
    cfg = paper_config("voc", max_iters=30, cam_iters=2, gmm_iters=4, descent_start=2, descent_steps=28)
    images, labels, boxes = _batch(48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dupl_step(net, Batch(images, labels, boxes, max_present=2), 5, cfg, par,
                        torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and net.branch1.encoder.patch_embed.proj.weight.grad is not None


def test_default_tags_per_family():
    assert pretrained_name("vit_base_patch14_reg4_dinov2", "dinov2") == "vit_base_patch14_reg4_dinov2.lvd142m"
    assert pretrained_name("vit_base_patch16_dinov3", "dinov3") == "vit_base_patch16_dinov3.lvd1689m"
    assert pretrained_name("vit_base_patch16_clip_224", "clip") == "vit_base_patch16_clip_224.openai"
    assert pretrained_name("vit_base_patch16_siglip_224", "siglip") == "vit_base_patch16_siglip_224.v2_webli"
    assert pretrained_name("eva02_base_patch14_224", "eva02") == "eva02_base_patch14_224.mim_in22k"
    assert pretrained_name("deit_base_patch16_224", "vit") == "deit_base_patch16_224.fb_in1k"
    assert pretrained_name("vit_base_patch16_clip_224.laion2b", "clip") == "vit_base_patch16_clip_224.laion2b"
    # a model without the family's tag keeps timm's default
    assert pretrained_name("eva02_base_patch14_448", "eva02") == "eva02_base_patch14_448"


def test_offline_error_names_the_tag_and_the_way_out(monkeypatch):
    def offline(timeout_s=5.0):
        raise ConnectionError("huggingface.co cannot be reached")
    monkeypatch.setattr(bb, "_weights_cached", lambda tag: False)
    monkeypatch.setattr(bb, "_check_hub_reachable", offline)
    with pytest.raises(UserError, match=r"cannot get the pretrained weights of "
                                        r"vit_small_patch14_reg4_dinov2\.lvd142m .*--pretrained_path"):
        Backbone("vit_small_patch14_reg4_dinov2", pretrained=True)
    with pytest.raises(UserError, match="add --no-pretrained"):
        Backbone("vit_small_patch14_reg4_dinov2", pretrained=True, backbone_args=SMALL)
    for bad in ("depth", "depth=2.5", "width=3", "depth=-1", "depth=x"):
        with pytest.raises(UserError, match="--backbone_args"):
            parse_backbone_args(bad)
    assert parse_backbone_args("depth=4, embed_dim=192,mlp_ratio=2.5") == {"depth": 4, "embed_dim": 192,
                                                                          "mlp_ratio": 2.5}
    with pytest.raises(UserError, match="timm cannot build"):
        Backbone("vit_small_patch14_reg4_dinov2", backbone_args="embed_dim=50,num_heads=3")


@pytest.mark.parametrize("name", NAMES)
def test_local_pretrained_files_of_each_family_load(name, tmp_path):
    torch.manual_seed(5)
    src = Backbone(name, backbone_args=SMALL)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in src.timm.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save({"model": src.timm.state_dict()}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        torch.manual_seed(6)
        enc = Backbone(name, backbone_args=SMALL)
        enc.load_weights(str(tmp_path / f))
        for k, v in src.timm.state_dict().items():
            assert torch.equal(enc.timm.state_dict()[k], v), (f, k)
    with pytest.raises(UserError, match="does not hold weights of this backbone"):
        Backbone(name, backbone_args="depth=3,embed_dim=64,num_heads=2").load_weights(str(tmp_path / "w.pth"))


def test_dinov2_release_layout_is_converted_and_other_patches_are_refused(tmp_path):
    """DINOv2's own checkpoints name registers ``register_tokens``, keep a ``mask_token`` and a
    class slot in the position embedding (timm folds it into the class token)."""
    torch.manual_seed(5)
    src = Backbone("vit_small_patch14_reg4_dinov2", backbone_args=SMALL)
    state = {("register_tokens" if k == "reg_token" else k): v for k, v in src.timm.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 48)
    slot = torch.randn(1, 1, 48)
    state["pos_embed"] = torch.cat([slot, src.timm.pos_embed.detach()], dim=1)
    state["cls_token"] = src.timm.cls_token.detach() - slot
    torch.save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    enc = Backbone("vit_small_patch14_reg4_dinov2", backbone_args=SMALL)
    enc.load_weights(str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"))
    assert torch.equal(enc.timm.reg_token, src.timm.reg_token) and torch.equal(enc.timm.pos_embed, src.timm.pos_embed)
    assert torch.allclose(enc.timm.cls_token, src.timm.cls_token, atol=1e-6)
    assert torch.equal(enc.timm.blocks[2].ls2.gamma, src.timm.blocks[2].ls2.gamma)
    clip16 = Backbone("vit_base_patch16_clip_224", backbone_args=SMALL)
    with pytest.raises(UserError, match="patch-14 encoder but --backbone is patch 16"):
        clip16.load_weights(str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"))


def test_checkpoints_of_different_families_are_told_apart():
    states = {n: _net(n).state_dict() for n in ("vit_small_patch14_reg4_dinov2", "vit_base_patch16_siglip_224",
                                                "vit_small_patch16_dinov3")}
    assert describe_state(states["vit_small_patch14_reg4_dinov2"]) == \
        "a ViT-width-48/14 (3 blocks, width 48, 4 registers, LayerScale)"
    assert describe_state(states["vit_base_patch16_siglip_224"]) == \
        "a ViT-width-48/16 (3 blocks, width 48, no class token)"
    assert "no position embedding" in describe_state(states["vit_small_patch16_dinov3"])
    with pytest.raises(UserError, match=r"holds a ViT-width-48/16 \(3 blocks, width 48, no class token\) "
                                        r"but --backbone vit_small_patch14_reg4_dinov2"):
        load_network(_net("vit_small_patch14_reg4_dinov2"), states["vit_base_patch16_siglip_224"])


FAMILY_RUN = ["--no-pretrained", "--backbone_args", SMALL, "--crop_size", "64", "--samples_per_gpu", "2",
              "--num_workers", "0", "--no-tensorboard", "--warmup_iters", "1", "--max_iters", "3",
              "--cam_iters", "1", "--gmm_iters", "2", "--eval_iters", "3", "--log_iters", "1",
              "--cam_scales", "1.0 0.5", "--cpu"]


@pytest.mark.parametrize("name", NAMES)
def test_training_checkpoint_evaluates_without_backbone_flags(name, voc_copy, tmp_path, one_line_error,
                                                              capsys):
    """Three iterations (phases A, B, C) of train_final_voc.py, then both evaluations read the
    backbone, its overrides and the aux block from the checkpoint."""
    wd = tmp_path / "run"
    train_final_voc.run(["--data_folder", str(voc_copy), "--work_dir", str(wd), "--backbone", name,
                         *FAMILY_RUN])
    log = (wd / "train.log").read_text()
    assert "Iter: 3;" in log and "Validating" in log
    ckpt = str(wd / "checkpoint.pth")
    net = load_model(ckpt, None, None, None, torch.device("cpu"))
    assert net.backbone_name == name and net.aux_layer == 1 and net.branch1.backbone.width == 48
    mean, std = _timm_stats(name, net.branch1.backbone.family)     # recorded, and used when loaded
    saved = read_checkpoint(ckpt)["args"]
    assert (tuple(saved["input_mean"]), tuple(saved["input_std"])) == (mean, std)
    assert net.input_stats == InputStats(mean, std)
    common = ["--data_folder", str(voc_copy), "--model_path", ckpt, "--num_workers", "0", "--cpu"]
    seg = eval_seg_voc.run(common + ["--no-crf", "--scales", "1.0", "--work_dir", str(tmp_path / "seg")])
    cams = eval_cam_voc.run(common + ["--infer_set", "val", "--size", "64", "--cam_scales", "1.0", "--no-par",
                                      "--work_dir", str(tmp_path / "cam")])
    assert 0 <= seg["Seg_1"]["miou"] <= 1 and 0 <= cams["scores"]["CAM_2"]["miou"] <= 1
    capsys.readouterr()
    err = one_line_error(eval_seg_voc.run, common + ["--backbone", "deit_tiny_patch16_224", "--no-crf"])
    assert f"contradicts {ckpt}" in err


def test_coco_training_takes_a_family_too(coco_copy, tmp_path):
    wd = tmp_path / "coco"
    train_final_coco.run(["--img_folder", str(coco_copy / "JPEGImages"), "--work_dir", str(wd),
                          "--backbone", "vit_base_patch16_siglip_224", *FAMILY_RUN])
    net = load_model(str(wd / "checkpoint.pth"), None, None, None, torch.device("cpu"),
                     defaults={"backbone": "deit_base_patch16_224", "num_classes": 81, "aux_layer": 9})
    assert net.num_classes == 81 and net.branch1.backbone.family == "siglip" and net.aux_layer == 1


def test_a_dinov2_run_resumes_without_backbone_flags(voc_copy, tmp_path, one_line_error, capsys):
    wd = tmp_path / "run"
    run = ["--data_folder", str(voc_copy), "--work_dir", str(wd), *FAMILY_RUN]
    train_final_voc.run(run[:4] + ["--backbone", "vit_small_patch14_reg4_dinov2"] + run[4:])
    first = (wd / "train.log").read_text()
    # the same run continued to iteration 4: no --backbone, --backbone_args or --no-pretrained
    flags = [f for f in FAMILY_RUN if f != "--no-pretrained"]
    i = flags.index("--backbone_args")
    flags = flags[:i] + flags[i + 2:]
    flags[flags.index("--max_iters") + 1] = "4"
    flags[flags.index("--eval_iters") + 1] = "4"
    train_final_voc.run(["--data_folder", str(voc_copy), "--resume", str(wd / "checkpoint.pth"), *flags])
    log = (wd / "train.log").read_text()[len(first):]
    assert "--backbone vit_small_patch14_reg4_dinov2 (from" in log and "Resumed from" in log
    assert load_model(str(wd / "checkpoint.pth"), None, None, None, torch.device("cpu")).branch1.backbone.family == "dinov2"
    # statistics other than the ones it was trained with are refused (the saved ones are adopted)
    assert "--input_mean [" in log and "--input_std [" in log
    capsys.readouterr()
    err = one_line_error(train_final_voc.run, ["--data_folder", str(voc_copy), "--resume", str(wd / "checkpoint.pth"),
                                               *flags, "--input_mean", "0.1,0.2,0.3"])
    assert "--input_mean 0.1,0.2,0.3 contradicts" in err


# ---------------------------------------------------------------- input statistics per family
STATS_NAMES = sorted(set(bb.EXAMPLES) | set(NAMES))
PAPER_VITS = ["deit_tiny_patch16_224", "deit_base_patch16_224", "vit_base_patch16_224"]
TINY_VIT = "depth=2,embed_dim=24,num_heads=1"


def _timm_stats(name, family):
    """Mean and std of timm's pretrained_cfg of the tag the family's weights come from, read now."""
    import timm
    cfg = timm.models.get_pretrained_cfg(pretrained_name(name, family))
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def _set_up(voc, name, *extra):
    args = train_args.get_args_parser("voc").parse_args(
        ["--data_folder", str(voc), "--backbone", name, "--backbone_args", SMALL, "--no-pretrained",
         "--crop_size", "64", "--num_workers", "0", "--no-tensorboard", "--cpu", *extra])
    run = train_engine.set_up(args, "voc", DistInfo(0, 1, 0, torch.device("cpu")), logging.getLogger("t"), None)
    return args, run


@pytest.mark.parametrize("name", STATS_NAMES)
def test_every_stage_normalises_with_the_statistics_of_the_familys_tag_read_from_timm(name, voc_copy):
    """Built as training builds it (random weights: the tag's statistics all the same), the
    training transform, the validation set, the encoder and the arguments the checkpoint records
    carry the mean and std of timm's pretrained_cfg of the tag whose weights the family loads."""
    args, run = _set_up(voc_copy, name)
    enc = run.net.branch1.backbone
    mean, std = _timm_stats(name, enc.family)
    assert (enc.input_stats.mean, enc.input_stats.std) == (mean, std) and not enc.input_stats.uint8_cast
    assert run.stream.loader.dataset.augmentation.stats == run.val_set.stats == enc.input_stats
    assert run.net.branch2.backbone.input_stats == enc.input_stats
    assert (tuple(args.input_mean), tuple(args.input_std)) == (mean, std)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    pixels = torch.from_numpy(run.val_set.raw_image(0)).permute(2, 0, 1).float()
    assert torch.equal(run.val_set[0][1], (pixels - m * 255.0) / (s * 255.0))


@pytest.mark.parametrize("name", PAPER_VITS)
def test_the_papers_vits_keep_the_original_imagenet_constants_whatever_timm_says(name):
    """ViT-B 21k's tag says 0.5 in timm; the paper's numbers were made with ImageNet's constants
    on every ViT/DeiT, and the paper's path keeps them (and the original's uint8 round trip)."""
    assert input_stats(name) == PAPER_STATS
    enc = Backbone(name, backbone_args=TINY_VIT)
    assert enc.paper_path and enc.input_stats == PAPER_STATS
    if name == "vit_base_patch16_224":
        assert _timm_stats(name, "vit") == ((0.5,) * 3, (0.5,) * 3)
    assert DualStudentNet(name, 21, backbone_args=TINY_VIT).input_stats == PAPER_STATS


def test_local_weights_keep_the_tags_statistics_and_the_flags_replace_them(voc_copy, tmp_path, monkeypatch):
    name = "vit_base_patch16_clip_224"
    clip = _timm_stats(name, "clip")
    assert clip[0] != PAPER_STATS.mean and clip[1] != PAPER_STATS.std
    loaded = []
    monkeypatch.setattr(Backbone, "load_weights", lambda self, path: loaded.append(path))
    (tmp_path / "clip.pth").write_bytes(b"")
    with torch.device("meta"):     # the full-size model, without memory: only the weights' file is faked
        enc = Backbone(name, pretrained_path=str(tmp_path / "clip.pth"))
    assert loaded == [str(tmp_path / "clip.pth")] and (enc.input_stats.mean, enc.input_stats.std) == clip
    assert input_stats(name, std=(0.25, 0.25, 0.25)) == InputStats(clip[0], (0.25, 0.25, 0.25))
    args, run = _set_up(voc_copy, name, "--input_mean", "0.5,0.4,0.3", "--input_std", "0.2 0.2 0.2")
    assert run.val_set.stats == run.net.input_stats == InputStats((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert args.input_mean == [0.5, 0.4, 0.3] and args.input_std == [0.2, 0.2, 0.2]


def _clip_checkpoint(path, saved_stats):
    """A random CLIP network's checkpoint; its saved arguments with the statistics or (an older
    checkpoint) without them."""
    net = _net("vit_base_patch16_clip_224")
    args = {"backbone": "vit_base_patch16_clip_224", "backbone_args": SMALL, "num_classes": 21, "aux_layer": 1}
    if saved_stats is not None:
        args.update(input_mean=list(saved_stats.mean), input_std=list(saved_stats.std))
    torch.save({"model": net.state_dict(), "args": args, "step": 3}, path)
    return str(path)


@pytest.fixture
def encoder_inputs(monkeypatch):
    """Every tensor that reaches an encoder, in order."""
    seen = []
    real = Backbone.token_maps

    def spy(self, x, final=True):
        seen.append(x.detach().clone())
        return real(self, x, final)
    monkeypatch.setattr(Backbone, "token_maps", spy)
    return seen


@pytest.mark.parametrize("saved", ["recorded", "older checkpoint", "custom"])
def test_a_clip_checkpoint_is_evaluated_and_drawn_with_its_statistics_without_flags(
        saved, voc_copy, tmp_path, encoder_inputs):
    mean, std = _timm_stats("vit_base_patch16_clip_224", "clip")
    want = InputStats((0.5, 0.45, 0.4), (0.3, 0.3, 0.3)) if saved == "custom" else InputStats(mean, std)
    ckpt = _clip_checkpoint(tmp_path / "clip.pth", None if saved == "older checkpoint" else want)
    eval_seg_voc.run(["--data_folder", str(voc_copy), "--model_path", ckpt, "--num_workers", "0", "--cpu",
                      "--no-crf", "--scales", "1.0", "--work_dir", str(tmp_path / "seg")])
    layout = voc_layout(str(voc_copy))
    rgb = EvalDataset(layout, str(voc_copy) + "_lists", "val").raw_image(0)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).float()
    m, s = torch.tensor(want.mean).view(3, 1, 1), torch.tensor(want.std).view(3, 1, 1)
    assert torch.equal(encoder_inputs[0][0], (pixels - m * 255.0) / (s * 255.0))
    assert not torch.allclose(encoder_inputs[0][0], PAPER_STATS.normalize_pixels(rgb), atol=1e-2)
    encoder_inputs.clear()
    visualize_cams.main(["--model_path", ckpt, "--data_folder", str(voc_copy), "--num_images", "1",
                         "--size", "64", "--out", str(tmp_path / "vis"), "--cpu"])
    full = [x for x in encoder_inputs if tuple(x.shape[-2:]) == rgb.shape[:2]]
    assert full and torch.equal(full[0][0], (pixels / 255.0 - m) / s)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224"] + NAMES)
def test_par_and_the_strong_view_get_the_8bit_image_whatever_the_family(name, par, monkeypatch, one_torch_thread):
    """PAR's image and the strong view's input are the training batch's 8-bit image / 255 for every
    family (the paper's path: the original's round trip, which drops some levels by one)."""
    import model.dupl as dupl
    net = _net(name)
    img = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    images = torch.stack([net.input_stats.normalize(i) for i in img])
    seen = {}
    real_par, real_strong = dupl.refine_cams_with_par, dupl.strong_augment

    def par_spy(image, *args, **kwargs):
        seen["par"] = image
        return real_par(image, *args, **kwargs)

    def strong_spy(image, **kwargs):
        seen["strong"], seen["stats"] = image, kwargs["stats"]
        return real_strong(image, **kwargs)
    monkeypatch.setattr(dupl, "refine_cams_with_par", par_spy)
    monkeypatch.setattr(dupl, "strong_augment", strong_spy)
    _, labels, boxes = _batch(48)
    cfg = paper_config("voc", max_iters=30, cam_iters=2, gmm_iters=4, descent_start=2, descent_steps=28)
    dupl_step(net, Batch(images, labels, boxes, max_present=2), 5, cfg, par, torch.Generator().manual_seed(0))
    exact = torch.from_numpy(img).permute(0, 3, 1, 2).float() / torch.full((1, 1, 1, 1), 255.0)
    assert seen["stats"] == net.input_stats and torch.equal(seen["strong"], seen["par"])
    if net.branch1.backbone.paper_path:
        assert torch.equal(seen["par"], PAPER_STATS.denormalize(images))
        assert float((seen["par"] - exact).abs().max()) <= 1 / 255 + 1e-7
    else:
        assert torch.equal(seen["par"], exact)


LEARN_BACKBONE = ("vit_small_patch14_reg4_dinov2", "depth=3,embed_dim=128,num_heads=2")


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    """The demo's synthetic VOC data (learnable classes), written once for this module."""
    root = tmp_path_factory.mktemp("learn")
    synthetic.write_voc(root, num_train=320, num_val=80, num_test=0, seed=0)
    return root / "VOC2012"


@pytest.mark.slow
def test_a_dinov2_pair_learns_on_the_demo_data(learn_data, tmp_path):
    """A non-paper family (registers and patch 14: 5 prefix tokens, a remainder at crop 96) through
    all three phases must end far above the all-background baseline: maps wired to the wrong tokens
    or positions do not learn."""
    layout = voc_layout(str(learn_data))
    lists = ensure_lists(layout, None, ["train_aug", "val"])
    cm = ConfusionMatrix(21)
    for _, _, mask, _ in DataLoader(EvalDataset(layout, lists, "val"), batch_size=None):
        cm.update(mask, torch.zeros_like(mask))
    baseline = 100 * cm.compute()["miou"]
    name, args = LEARN_BACKBONE
    result = train_final_voc.run([
        "--data_folder", str(learn_data), "--work_dir", str(tmp_path / "run"), "--backbone", name,
        "--backbone_args", args, "--no-pretrained", "--crop_size", "96", "--samples_per_gpu", "4",
        "--max_iters", "120", "--cam_iters", "30", "--gmm_iters", "75", "--warmup_iters", "15",
        "--lr", "2e-4", "--log_iters", "30", "--eval_iters", "120", "--num_workers", "1",
        "--no-tensorboard", "--cpu"])
    seg = [100 * result["scores"][f"Seg_{k}"]["miou"] for k in (1, 2)]
    cam = [100 * result["scores"][f"CAM_{k}"]["miou"] for k in (1, 2)]
    log = (tmp_path / "run" / "train.log").read_text()
    seg_loss = {int(n): float(v) for n, v in re.findall(r"Iter: (\d+);.*seg_loss: ([\d.]+)", log)}
    assert seg_loss[30] == 0 and min(seg_loss[n] for n in (60, 90, 120)) > 0   # phases A, B, C ran
    # Measured on 2 CPU cores (baseline 14.3): CAM 47.4 / 44.8, Seg 22.0 / 19.5 (students 1 / 2).
    # The same run with the final map taken as if there were one prefix token (4 registers read as
    # patches, every patch shifted): CAM 13.1 / 13.9, Seg 12.2 / 11.6, i.e. at or below the
    # baseline. The thresholds sit between the two.
    assert min(cam) >= baseline + 15.0, (seg, cam, baseline)
    assert min(seg) >= baseline + 2.5, (seg, cam, baseline)
