"""The students' encoder (docs/method.md#network, docs/method.md#backbones): :class:`Backbone`,
one object chosen once from ``--backbone`` that owns everything family-specific.

A :class:`Backbone` holds a timm ViT-family model (:attr:`Backbone.timm`, which the student
registers as its ``encoder`` module, so checkpoints keep timm's keys, ``branch1.encoder.blocks.0...``,
in timm's order): a plain ``VisionTransformer`` (ViT/DeiT, the paper's), any other
``VisionTransformer`` (DINOv2 with or without registers, CLIP, SigLIP, ...) or an ``Eva``
(EVA-02, DINOv3: RoPE). It gives the final patch-token map (after the final LayerNorm) and the
map of the auxiliary block (no LayerNorm) of any input size, as ``(B, D, h, w)`` with prefix tokens
(class token, registers) dropped; it knows its patch, width, depth, aux block and prefix tokens,
the input statistics its images are normalised with, how to load its weights and how to describe
itself in a checkpoint-mismatch message. Nothing outside this module asks which family it is.

* Plain ViT/DeiT (one class token, learned position embedding with a class slot, no pre-norm, no
  LayerScale) run the paper's path, :func:`vit_token_maps`: the 14x14 position embedding is
  resized with bicubic interpolation, ``align_corners=False`` and no antialiasing (timm's own
  dynamic-size path antialiases when it shrinks the grid, which gives different numbers). Their
  inputs are normalised with the original's ImageNet constants.
* Every other encoder runs timm's ``forward_intermediates`` with ``dynamic_img_size``
  (:func:`timm_token_maps`): timm resamples a learned position embedding or builds the RoPE grid
  for the input size, as each family does in timm. Their inputs are normalised with the mean and
  std of timm's ``pretrained_cfg`` of the tag whose weights they load (:func:`input_stats`).
* The grid is ``floor(H / p) x floor(W / p)`` for the model's patch ``p``: the bottom rows and right
  columns that do not fill a patch are dropped (what the paper's stride-p patch convolution does).
"""
import functools
import importlib
import os
import pickle
import sys
import zipfile
import zlib
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from utils.input_stats import PAPER_STATS, InputStats
from utils.checkpoint import read_checkpoint
from utils.errors import UserError
from utils.safe_io import check_safetensors, check_zip, npz_shapes

if TYPE_CHECKING:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

TimmModel = Union["VisionTransformer", "Eva"]


def _timm():
    """timm, imported on first use: it pulls in torchvision and torch._dynamo, which a script
    refusing a bad file or flag never needs."""
    import timm
    return timm


def _vit_classes():
    """(VisionTransformer, Eva), imported on first use (see :func:`_timm`)."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer, Eva


def _first_line(exc: BaseException, limit: int) -> str:
    """The first line of ``exc``'s message (its type when empty), cut to ``limit`` characters."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:limit]


# what weights of another layout make timm's loaders and converters raise: a missing record, a
# tensor or array of another rank, size or dtype, an entry that is not a tensor (a checkpoint may
# hold numbers and strings), a parameter this model does not have
LAYOUT_ERRORS = (KeyError, IndexError, ValueError, RuntimeError, TypeError, AttributeError)
# what reading a damaged record of a zip (an .npz past its checked directory) raises
ZIP_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _safetensors_error() -> type:
    """safetensors' error for a header or data it cannot decode (imported when one is raised)."""
    from safetensors import SafetensorError
    return SafetensorError


def _download_errors() -> Tuple[type, ...]:
    """What getting timm's weights raises for a cause outside the program: no network, a refused
    or failed request, a missing cache entry (OSError: the hub's HTTP and cache errors, urllib's,
    requests'; httpx's transport errors, which are not OSErrors), a tag without weights or a
    damaged cached ``.bin`` (RuntimeError), a damaged cached ``.safetensors`` or pickle."""
    errors = [OSError, RuntimeError, EOFError, pickle.UnpicklingError, _safetensors_error()]
    for library in ("httpx2", "httpx"):    # huggingface_hub 2 / 1 (earlier ones use requests)
        try:
            errors.append(importlib.import_module(library).HTTPError)
        except ImportError:
            pass
    return tuple(errors)


# an .npz of float weights deflates to about its size; a record declaring more is refused
NPZ_MAX_RATIO = 4
# ImageNet weights of the paper's runs (docs/method.md#network)
PRETRAINED_TAGS = {
    "deit_base_patch16_224": "fb_in1k",
    "vit_base_patch16_224": "orig_in21k_ft_in1k",
}
# the weights a name without a tag loads, per family, where timm has them for that model
# (docs/method.md#backbones); other names load timm's default tag
FAMILY_TAGS = {
    "dinov2": "lvd142m",
    "dinov3": "lvd1689m",
    "clip": "openai",
    "siglip": "v2_webli",
    "eva02": "mim_in22k",
}
FAMILY_NAMES = {"vit": "ViT/DeiT", "dinov2": "DINOv2", "dinov3": "DINOv3", "clip": "CLIP",
                "siglip": "SigLIP", "eva02": "EVA-02", "vit-other": "timm ViT", "eva-other": "timm EVA"}
PLAIN_VITS = tuple(
    f"{family}_{size}_patch16_224"
    for family in ("deit", "vit") for size in ("tiny", "small", "base", "large")
    if not (family == "deit" and size == "large")
)
EXAMPLES = ("vit_base_patch14_reg4_dinov2", "vit_base_patch16_dinov3", "vit_base_patch16_clip_224",
            "vit_base_patch16_siglip_224", "eva02_base_patch14_224")
# architecture overrides --backbone_args accepts (random weights only)
BACKBONE_ARG_KEYS = ("depth", "embed_dim", "num_heads", "mlp_ratio")
# the width of each ViT size, for checkpoint descriptions
VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large"}


def parse_backbone_args(text: Union[None, str, Dict[str, float]]) -> Dict[str, Union[int, float]]:
    """``"depth=4,embed_dim=192,num_heads=3"`` (or a dict, or None) -> timm keyword arguments."""
    if not text:
        return {}
    items = text.items() if isinstance(text, dict) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(text).split(",") if part.strip())
    out: Dict[str, Union[int, float]] = {}
    for key, value in items:
        key = key.strip()
        if key not in BACKBONE_ARG_KEYS or value is None:
            raise UserError(f"--backbone_args {text}: give KEY=VALUE pairs separated by commas with "
                            f"KEY one of {', '.join(BACKBONE_ARG_KEYS)}, e.g. depth=4,embed_dim=192,num_heads=3")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--backbone_args {text}: {key}={value} is not a number") from None
        out[key] = int(number) if key != "mlp_ratio" else number
        if out[key] <= 0 or (key != "mlp_ratio" and number != int(number)):
            raise UserError(f"--backbone_args {text}: {key} must be a positive "
                            f"{'number' if key == 'mlp_ratio' else 'integer'}")
    return out


def default_aux_layer(depth: int) -> int:
    """The auxiliary classifier's block for an encoder of ``depth`` blocks (0-based):
    ``floor(3 * depth / 4)``, at least one block before the last: 9 of 12 (the paper's -3),
    18 of 24, 30 of 40; 2 of 4, 0 of 2."""
    return max(0, min(depth - 2, (3 * depth) // 4))


def is_plain_vit(model: nn.Module) -> bool:
    """ViT/DeiT as in the paper: one class token, a learned position embedding with a class slot,
    no pre-norm and no LayerScale. These run :func:`vit_token_maps`."""
    if type(model) is not _vit_classes()[0]:
        return False
    ls = getattr(model.blocks[0], "ls1", None) if len(model.blocks) else None
    return (model.num_prefix_tokens == 1 and model.has_class_token and model.pos_embed is not None
            and not model.no_embed_class and isinstance(model.norm_pre, nn.Identity)
            and (ls is None or isinstance(ls, nn.Identity)))


def backbone_family(name: str, model: nn.Module) -> str:
    """``vit`` (the paper's path), ``dinov2``, ``dinov3``, ``clip``, ``siglip``, ``eva02``, or
    ``vit-other`` / ``eva-other`` for other timm ViTs."""
    base = name.split(".")[0]
    if isinstance(model, _vit_classes()[1]):
        return "dinov3" if "dinov3" in base else ("eva02" if "eva02" in base else "eva-other")
    if "dinov2" in base:
        return "dinov2"
    if "siglip" in base:
        return "siglip"
    if "clip" in base:
        return "clip"
    return "vit" if is_plain_vit(model) else "vit-other"


def _timm_kwargs(model_args: Dict[str, Union[int, float]]) -> dict:
    """Keyword arguments of every non-plain encoder: any input size, no classifier head, no
    dropout / drop-path."""
    return dict(model_args, dynamic_img_size=True, num_classes=0, drop_rate=0.0, drop_path_rate=0.0)


def _build(name: str, model_args: Dict[str, Union[int, float]], **kwargs) -> TimmModel:
    """timm's randomly initialised model of ``name`` (tag ignored); a model timm cannot build with
    these arguments is a one-line error."""
    try:
        return _timm().create_model(name.split(".")[0], pretrained=False, **kwargs)
    except (TypeError, AssertionError, ValueError, RuntimeError) as exc:
        msg = _first_line(exc, 120)
        raise UserError(f"timm cannot build --backbone {name} with --backbone_args "
                        f"{model_args} ({msg})") from None


def _probe(name: str, model_args: Dict[str, Union[int, float]]) -> TimmModel:
    """The model of ``name`` without initialised weights (on the meta device), to see which path
    it takes; a name that is not a timm ViT-family encoder is a one-line error."""
    if name.split(".")[0] not in _timm().list_models():
        raise UserError(f"--backbone {name} is not a timm model; use e.g. one of "
                        f"{', '.join(PLAIN_VITS[:3] + EXAMPLES)}")
    with torch.device("meta"):
        probe = _build(name, model_args, **model_args)
    if not isinstance(probe, _vit_classes()) or not hasattr(probe, "forward_intermediates"):
        raise UserError(f"--backbone {name} is not a ViT-family encoder with a patch-token grid (timm "
                        f"VisionTransformer or Eva: ViT/DeiT, DINOv2, DINOv3, CLIP, SigLIP, EVA-02); "
                        f"use e.g. one of {', '.join(EXAMPLES)}")
    return probe


def _create_empty(name: str, model_args: Optional[Dict[str, Union[int, float]]] = None
                  ) -> Tuple[TimmModel, dict]:
    """The randomly initialised model of ``name`` and the timm keyword arguments it was built with."""
    model_args = dict(model_args or {})
    if is_plain_vit(_probe(name, model_args)):
        return _build(name, model_args, **model_args), model_args   # plain ViTs: no dropout by default
    kwargs = _timm_kwargs(model_args)
    return _build(name, model_args, **kwargs), kwargs


@functools.lru_cache(maxsize=64)
def _path_and_family(name: str) -> Tuple[bool, str]:
    """(the paper's path?, family) of ``--backbone name``, from a model without weights."""
    probe = _probe(name, {})
    return is_plain_vit(probe), backbone_family(name, probe)


def pretrained_name(name: str, family: str) -> str:
    """``NAME.TAG`` of the weights ``--pretrained`` loads for ``--backbone name``: the tag given, the
    paper's for its two ViTs, the family's default where timm has it for this model, else timm's
    default."""
    if "." in name:
        return name
    if name in PRETRAINED_TAGS:
        return f"{name}.{PRETRAINED_TAGS[name]}"
    tag = FAMILY_TAGS.get(family)
    if tag and _timm().list_models(f"{name}.{tag}", pretrained=True):
        return f"{name}.{tag}"
    return name


def _stats(name: str, paper_path: bool, family: str, mean: Optional[Sequence[float]],
           std: Optional[Sequence[float]]) -> InputStats:
    """See :func:`input_stats`."""
    if paper_path:
        base = PAPER_STATS
    else:
        full = pretrained_name(name, family)
        try:
            cfg = _timm().models.get_pretrained_cfg(full)
        except RuntimeError as exc:
            raise UserError(f"--backbone {name}: timm has no weights {full} ({_first_line(exc, 100)}); "
                            "give a tag timm lists for this model") from None
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        base = InputStats(getattr(cfg, "mean", None) or IMAGENET_DEFAULT_MEAN,
                          getattr(cfg, "std", None) or IMAGENET_DEFAULT_STD)
    if mean is None and std is None:
        return base
    return InputStats(base.mean if mean is None else mean, base.std if std is None else std,
                      base.uint8_cast)


def input_stats(name: str, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None) -> InputStats:
    """The input statistics of an encoder of ``--backbone name``, read without building it.

    The paper's ViT/DeiT path keeps the original's ImageNet constants (whatever timm's config of
    the tag says, e.g. ViT-B 21k's 0.5); every other family takes the mean and std of timm's
    ``pretrained_cfg`` of the tag :func:`pretrained_name` picks (the weights ``--pretrained`` loads;
    the same with ``--pretrained_path`` or random weights). ``mean`` / ``std`` given (``--input_mean``
    / ``--input_std``, or a checkpoint's) replace them. Only timm's registry is read: no download.
    """
    return _stats(name, *_path_and_family(name), mean, std)


def _patch_kernel(state: Dict[str, torch.Tensor]) -> Optional[Tuple[int, ...]]:
    """Kernel size of the patch embedding in a state dict of any known layout, if there is one."""
    for key, value in state.items():
        if (key.endswith("patch_embed.proj.weight") or key.endswith("conv1.weight")) and value.dim() == 4:
            return tuple(value.shape[-2:])
    return None


def describe_state(state: Dict[str, torch.Tensor], prefix: str = "branch1.encoder.") -> str:
    """``a ViT-tiny/16 (12 blocks, width 192)`` for the encoder under ``prefix`` in ``state``;
    other layouts add what tells them apart: register tokens, no class token, no learned position
    embedding (RoPE), pre-norm, LayerScale."""
    proj = state[prefix + "patch_embed.proj.weight"]
    width, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max((int(k[len(prefix + "blocks."):].split(".")[0])
                     for k in state if k.startswith(prefix + "blocks.")), default=-1)
    size = VIT_SIZES.get(width, f"width-{width}")
    extras = []
    if prefix + "reg_token" in state:
        extras.append(f"{state[prefix + 'reg_token'].shape[1]} registers")
    if prefix + "cls_token" not in state:
        extras.append("no class token")
    if prefix + "pos_embed" not in state:
        extras.append("no position embedding")
    if prefix + "norm_pre.weight" in state:
        extras.append("pre-norm")
    if any(k.startswith(prefix + "blocks.0.") and (".ls1." in k or k.endswith("gamma_1"))
           for k in state):
        extras.append("LayerScale")
    more = "".join(f", {e}" for e in extras)
    return f"a ViT-{size}/{patch} ({depth} blocks, width {width}{more})"


class Backbone:
    """A student's encoder as ``--backbone NAME[.TAG]`` chose it (docs/method.md#backbones): the
    timm model (:attr:`timm`) and everything its family decides about it.

    The student registers :attr:`timm` itself as its ``encoder`` module, so a state dict or an
    optimiser built from the student holds timm's parameters under timm's names and in timm's
    order (``encoder.blocks``, ``encoder.pos_embed`` ...); this object holds no parameters.

    ``aux_layer`` None: :func:`default_aux_layer`. ``pretrained_path`` loads a local file (no
    network); ``pretrained`` loads timm's weights of :func:`pretrained_name` (the paper's
    ``deit_base_patch16_224.fb_in1k``, ``vit_base_patch16_224.orig_in21k_ft_in1k``; DINOv2
    ``lvd142m``, DINOv3 ``lvd1689m``, CLIP ``openai``, SigLIP ``v2_webli``, EVA-02 ``mim_in22k``).
    ``backbone_args`` overrides the architecture (depth, width, heads; random weights only).
    ``grad_checkpointing`` recomputes each block's activations in the backward pass.
    ``input_mean`` / ``input_std`` replace the family's input statistics (:func:`input_stats`).
    Dropout and drop-path are off; the position embedding and the unused heads are frozen.
    """

    def __init__(self, name: str, aux_layer: Optional[int] = None, pretrained: bool = False,
                 pretrained_path: Optional[str] = None,
                 backbone_args: Union[None, str, Dict[str, float]] = None,
                 grad_checkpointing: bool = False, input_mean: Optional[Sequence[float]] = None,
                 input_std: Optional[Sequence[float]] = None):
        model_args = parse_backbone_args(backbone_args)
        model, kwargs = _create_empty(name, model_args)
        self.timm: TimmModel = model
        self.name = name
        self.paper_path = is_plain_vit(model)
        self.family = backbone_family(name, model)
        self.aux_layer = self._check_aux_layer(aux_layer)
        self.input_stats = _stats(name, self.paper_path, self.family, input_mean, input_std)
        if model_args and (pretrained or pretrained_path):
            raise UserError(f"--backbone_args {backbone_args} changes the architecture of {name}, so "
                            "its pretrained weights do not fit; add --no-pretrained (random weights)")
        if pretrained_path:
            self.load_weights(pretrained_path)
        elif pretrained:
            self._load_timm_weights(kwargs)
        self._freeze_unused()
        if grad_checkpointing:
            model.set_grad_checkpointing(True)

    def _check_aux_layer(self, aux_layer: Optional[int]) -> int:
        depth = self.depth
        if aux_layer is None:
            return default_aux_layer(depth)
        if not -depth <= aux_layer < depth:
            raise UserError(f"--aux_layer {aux_layer} is outside the {depth} blocks of {self.name}; give "
                            f"a block index from {-depth} to {depth - 1} (or leave it out: block "
                            f"{default_aux_layer(depth)})")
        return aux_layer

    def _freeze_unused(self) -> None:
        """Freeze the position embedding and what is kept for the checkpoint layout but never used:
        the classification head (ImageNet head of the paper's ViTs; SigLIP's attention pool; a final
        norm that only acts after pooling). Freezing changes nothing (AdamW skips parameters without
        gradients) and lets DDP run without find_unused_parameters."""
        model = self.timm
        if model.pos_embed is not None:
            model.pos_embed.requires_grad_(False)
        model.head.requires_grad_(False)
        if getattr(model, "attn_pool", None) is not None:
            model.attn_pool.requires_grad_(False)
        if not isinstance(model.norm, nn.Identity):
            model.fc_norm.requires_grad_(False)

    # ------------------------------------------------------------------ what it is
    @property
    def patch_size(self) -> int:
        return self.timm.patch_embed.patch_size[0]

    @property
    def width(self) -> int:
        """Channels of its token maps (timm's ``embed_dim``)."""
        return self.timm.embed_dim

    @property
    def depth(self) -> int:
        return len(self.timm.blocks)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens (class token, registers), dropped from the maps."""
        return self.timm.num_prefix_tokens

    @property
    def grad_checkpointing(self) -> bool:
        return bool(self.timm.grad_checkpointing)

    def grid(self, height: int, width: int) -> Tuple[int, int]:
        """The token grid of an ``height x width`` input: ``floor(H / p) x floor(W / p)``."""
        return height // self.patch_size, width // self.patch_size

    def describe(self) -> str:
        """This encoder as :func:`describe_state` words it, e.g. ``a ViT-tiny/16 (12 blocks, width 192)``."""
        return describe_state(self.timm.state_dict(), prefix="")

    def foreign_layout(self, state: Dict[str, torch.Tensor], prefix: str) -> Optional[str]:
        """None when the encoder weights under ``prefix`` in ``state`` have this encoder's layout
        (patch, width, depth, tokens, position-embedding grid); else their description."""
        theirs = describe_state(state, prefix)
        pos, own = prefix + "pos_embed", self.timm.pos_embed
        if theirs != self.describe() or (own is not None and pos in state and own.shape != state[pos].shape):
            return theirs
        return None

    # ------------------------------------------------------------------ token maps
    def token_maps(self, x: torch.Tensor, final: bool = True) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """``(N, 3, H, W)`` -> final and aux token maps, each ``(N, D, H//p, W//p)``
        (``final=False``: ``(None, aux)``, the blocks after the aux block are not run)."""
        if self.paper_path:
            return vit_token_maps(self.timm, x, self.aux_layer, final)
        return timm_token_maps(self.timm, x, self.aux_layer, final)

    # ------------------------------------------------------------------ weights
    def _load_timm_weights(self, kwargs: dict) -> None:
        """timm's pretrained weights of :func:`pretrained_name` (from the Hugging Face cache, or
        downloaded); offline without them, a one-line error that says how to get them."""
        full = pretrained_name(self.name, self.family)
        what = "ImageNet" if self.family == "vit" else "pretrained"
        try:
            if not _weights_cached(full):
                _check_hub_reachable()
            if self.paper_path:
                loaded = _timm().create_model(full, pretrained=True, drop_rate=0.0, drop_path_rate=0.0)
            else:
                loaded = _timm().create_model(full, pretrained=True, **kwargs)
        except _download_errors() as exc:
            msg = _first_line(exc, 100)
            raise UserError(
                f"cannot get the {what} weights of {full} ({msg}); on a machine with internet run "
                f"`python -c \"import timm; timm.create_model('{full}', pretrained=True)\"` to fill "
                "the Hugging Face cache, or download the weights file and pass --pretrained_path FILE"
            ) from None
        self.timm.load_state_dict(loaded.state_dict())

    def load_weights(self, path: str) -> None:
        """Load pretrained weights from a local file: a timm ``.safetensors`` / ``.pth`` (bare state
        dict or under ``model``/``state_dict``) of any family, a family's own release where timm
        converts it (DeiT, DINOv2, DINOv3, EVA-02, OpenAI/OpenCLIP ``.pth``), or a timm/JAX/big_vision
        ``.npz`` (ViT, SigLIP)."""
        if not os.path.isfile(path):
            raise UserError(f"--pretrained_path {path} does not exist")
        vit = self.timm
        if path.endswith(".npz"):
            _load_npz_weights(vit, path)
            return
        state = _read_state_dict(path)
        own = vit.state_dict()
        if not self.paper_path:
            state = _family_state(vit, state, path)
        # the classification / pooling head is never used; drop it when its size differs
        unused = ("head.", "attn_pool.", "fc_norm.") if not self.paper_path else ("head.",)
        state = {k: v for k, v in state.items()
                 if not (k.startswith(unused) and (k not in own or own[k].shape != v.shape))}
        missing = [k for k in own if k not in state and not k.startswith(unused)]
        wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
        if missing or wrong:
            what = f"missing {missing[:3]}" if missing else \
                f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
            raise UserError(f"--pretrained_path {path} does not hold weights of this backbone ({what}); "
                            "check --backbone")
        vit.load_state_dict(state, strict=False)


def _load_npz_weights(vit: TimmModel, path: str) -> None:
    """A timm/JAX/big_vision ``.npz`` into a VisionTransformer family, through timm's loader."""
    if not isinstance(vit, _vit_classes()[0]):
        raise UserError(f"--pretrained_path {path}: .npz (JAX/big_vision) weights exist for "
                        "VisionTransformer families only; give this backbone's .safetensors or .pth")
    # numpy reads it without pickle; each record inflates at most to its declared size
    check_zip(path, "--pretrained_path", max_member=NPZ_MAX_RATIO * os.path.getsize(path),
              max_ratio=NPZ_MAX_RATIO)
    _check_npz_patch(vit, path)
    try:
        vit.load_pretrained(path)
    except LAYOUT_ERRORS + ZIP_READ_ERRORS as exc:
        msg = _first_line(exc, 120)
        raise UserError(f"cannot load --pretrained_path {path} into this backbone ({msg}); "
                        "check --backbone") from None


def _check_npz_patch(vit: TimmModel, path: str) -> None:
    """The patch kernel of an ``.npz`` (``.../embedding/kernel``, JAX layout ``(p, p, 3, D)``), read
    from its array header, must be this backbone's: timm would otherwise resample the kernel to the
    model's patch through a ``(p*p) x (p*p)`` matrix (a 160-pixel kernel: 25600 squared floats)."""
    patch, width = tuple(vit.patch_embed.proj.weight.shape[-2:]), vit.patch_embed.proj.weight.shape[0]
    for name, shape in npz_shapes(path, "--pretrained_path").items():
        if name.endswith("embedding/kernel") and (len(shape) != 4 or tuple(shape[:2]) != patch
                                                   or shape[3] != width):
            raise UserError(f"--pretrained_path {path} holds a patch kernel of shape {tuple(shape)}, "
                            f"not this backbone's {patch + (3, width)}; check --backbone")


def _read_state_dict(path: str) -> dict:
    """The state dict of a ``.safetensors`` or ``.pth`` file (bare, or under ``model`` /
    ``state_dict``); a ``.pth`` is read within the checkpoint reader's budgets
    (docs/data.md#untrusted-files)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            check_safetensors(path, "--pretrained_path")
            state = load_file(path)
        else:
            state = read_checkpoint(path)
    except (OSError, _safetensors_error()) as exc:
        raise UserError(f"cannot read --pretrained_path {path} ({exc})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"--pretrained_path {path} holds no state dict")
    return state


def _family_state(vit: TimmModel, state: dict, path: str) -> dict:
    """``state`` with the patch size checked and converted by the family's own converter (OpenAI
    CLIP, DINOv2/v3 and EVA-02 releases, OpenCLIP prefixes), for an encoder that is not a plain ViT."""
    kernel = _patch_kernel(state)
    patch = tuple(vit.patch_embed.proj.weight.shape[-2:])
    if kernel is not None and kernel != patch:
        raise UserError(f"--pretrained_path {path} holds a patch-{kernel[0]} encoder but --backbone is "
                        f"patch {patch[0]}; check --backbone")
    filter_fn = getattr(sys.modules[type(vit).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, vit)
        except LAYOUT_ERRORS as exc:
            msg = _first_line(exc, 120)
            raise UserError(f"--pretrained_path {path} does not hold weights of this backbone "
                            f"({msg}); check --backbone") from None
    return state


def _weights_cached(tag: str) -> bool:
    """Whether timm's weights for ``tag`` are already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(f"timm/{tag}", f), str)
               for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def _check_hub_reachable(timeout_s: float = 5.0) -> None:
    """Fail at once on an offline machine instead of after the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"{host} cannot be reached: {exc}") from None


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int],
                     old_grid: Tuple[int, int]) -> torch.Tensor:
    """``(1, 1 + H0*W0, D)`` -> ``(1, 1 + h*w, D)``: bicubic resize of the patch grid
    (``align_corners=False``, no antialias), class-token vector unchanged and first."""
    if tuple(grid) == tuple(old_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    d = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)
    return torch.cat([cls_pos, patch_pos], dim=1)


def vit_token_maps(vit: "VisionTransformer", x: torch.Tensor, aux_layer: int,
                   final: bool = True) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Final and auxiliary patch-token maps of ``x (B, 3, H, W)``, each ``(B, D, H//p, W//p)``.

    Final = last block after the final LayerNorm; auxiliary = output of block ``aux_layer``
    (negative counts from the end: -3 is block 9 of 12), without LayerNorm. Class token dropped.
    ``final=False`` stops after the aux block and returns ``(None, aux)``.
    """
    b = x.shape[0]
    tokens = vit.patch_embed.proj(x)                       # stride-p conv drops remainders
    h, w = tokens.shape[-2:]
    tokens = vit.patch_embed.norm(tokens.flatten(2).transpose(1, 2))
    pos = resize_pos_embed(vit.pos_embed, (h, w), vit.patch_embed.grid_size)
    tokens = torch.cat([vit.cls_token.expand(b, -1, -1), tokens], dim=1) + pos
    tokens = vit.norm_pre(vit.pos_drop(tokens))
    aux_index = aux_layer % len(vit.blocks)
    aux = None
    recompute = vit.grad_checkpointing and torch.is_grad_enabled()
    for i, block in enumerate(vit.blocks):
        tokens = checkpoint(block, tokens, use_reentrant=False) if recompute else block(tokens)
        if i == aux_index:
            aux = tokens
            if not final:
                break

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].transpose(1, 2).reshape(b, -1, h, w)

    if not final:
        return None, to_map(aux)
    return to_map(vit.norm(tokens)), to_map(aux)


def timm_token_maps(model: TimmModel, x: torch.Tensor, aux_layer: int,
                    final: bool = True) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """:func:`vit_token_maps` for every other family, through timm's ``forward_intermediates``.

    The input is cut to ``floor(H/p)*p x floor(W/p)*p`` (bottom rows and right columns dropped, as
    the paper's patch convolution does); timm adds the position embedding resampled to the grid
    and/or builds RoPE for it. Prefix tokens (class, registers) are dropped. Final = last block
    after the final LayerNorm: ``norm``, or ``fc_norm`` applied to every token where the family's
    last LayerNorm sits after pooling (EVA-02); aux = block ``aux_layer`` without LayerNorm.
    """
    b, _, height, width = x.shape
    p = model.patch_embed.patch_size
    h, w = height // p[0], width // p[1]
    if (h * p[0], w * p[1]) != (height, width):
        x = x[:, :, :h * p[0], :w * p[1]]
    aux_index = aux_layer % len(model.blocks)

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(b, -1, h, w)

    if not final:
        (aux,) = model.forward_intermediates(x, indices=[aux_index], output_fmt="NLC",
                                             intermediates_only=True, stop_early=True)
        return None, to_map(aux)
    tokens, (aux,) = model.forward_intermediates(x, indices=[aux_index], output_fmt="NLC")
    tokens = tokens[:, model.num_prefix_tokens:]
    if isinstance(model.norm, nn.Identity):
        tokens = model.fc_norm(tokens)
    return to_map(tokens), to_map(aux)
