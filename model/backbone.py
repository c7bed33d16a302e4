"""ViT/DeiT backbone on timm 1.x (docs/method.md#network).

A student's encoder is a plain timm ``VisionTransformer`` (so checkpoints keep timm's key names).
:func:`vit_token_maps` runs it on any input size and returns the final patch-token map (after the
final LayerNorm) and the map of the auxiliary block (no LayerNorm), as ``(B, D, h, w)``.
The 14x14 position embedding is resized with bicubic interpolation, ``align_corners=False`` and no
antialiasing (timm's own dynamic-size path antialiases, which gives different numbers).
"""
import os
from typing import Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from datasets.errors import UserError

# ImageNet weights of the paper's runs (docs/method.md#network); other names use timm's default tag.
PRETRAINED_TAGS = {
    "deit_base_patch16_224": "fb_in1k",
    "vit_base_patch16_224": "orig_in21k_ft_in1k",
}
PLAIN_VITS = tuple(
    f"{family}_{size}_patch16_224"
    for family in ("deit", "vit") for size in ("tiny", "small", "base", "large")
    if not (family == "deit" and size == "large")
)


def _create_empty(name: str) -> VisionTransformer:
    base = name.split(".")[0]
    if base not in timm.list_models():
        raise UserError(f"--backbone {name} is not a timm model; use one of {', '.join(PLAIN_VITS)}")
    vit = timm.create_model(base, pretrained=False)  # plain ViTs default to no dropout/drop-path
    if (not isinstance(vit, VisionTransformer) or vit.num_prefix_tokens != 1
            or not vit.has_class_token or vit.pos_embed is None or vit.no_embed_class):
        raise UserError(f"--backbone {name} is not a plain ViT/DeiT with one class token; use one "
                        f"of {', '.join(PLAIN_VITS)}")
    return vit


def load_vit_weights(vit: VisionTransformer, path: str) -> None:
    """Load ImageNet weights from a local file: a timm/DeiT ``.pth`` (bare state dict or under
    ``model``/``state_dict``), a ``.safetensors`` file or a timm/JAX ``.npz``."""
    if not os.path.isfile(path):
        raise UserError(f"--pretrained_path {path} does not exist")
    if path.endswith(".npz"):
        vit.load_pretrained(path)
        return
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read --pretrained_path {path} ({exc})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = vit.state_dict()
    # the 1000-way (or 21k-way) head is never used; drop it when its size differs
    state = {k: v for k, v in state.items()
             if not (k.startswith("head.") and k in own and own[k].shape != v.shape)}
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else \
            f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        raise UserError(f"--pretrained_path {path} does not hold weights of this backbone ({what}); "
                        "check --backbone")
    vit.load_state_dict(state, strict=False)


def _weights_cached(tag: str) -> bool:
    """Whether timm's weights for ``tag`` are already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(f"timm/{tag}", f), str)
               for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def _check_hub_reachable(timeout_s: float = 5.0) -> None:
    """Fail at once on an offline machine instead of after the hub client's retries (~1 min)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"{host} cannot be reached: {exc}") from None


def create_vit(name: str, pretrained: bool = False,
               pretrained_path: Optional[str] = None) -> VisionTransformer:
    """A timm ViT with dropout and drop-path off and a frozen position embedding.

    ``pretrained_path`` loads a local file (no network); ``pretrained`` loads timm's ImageNet
    weights with the paper's tag (``deit_base_patch16_224.fb_in1k``,
    ``vit_base_patch16_224.orig_in21k_ft_in1k``).
    """
    vit = _create_empty(name)
    if pretrained_path:
        load_vit_weights(vit, pretrained_path)
    elif pretrained:
        base = name.split(".")[0]
        full = name if "." in name else (f"{base}.{PRETRAINED_TAGS[base]}" if base in PRETRAINED_TAGS
                                         else base)
        try:
            if not _weights_cached(full):
                _check_hub_reachable()
            loaded = timm.create_model(full, pretrained=True, drop_rate=0.0, drop_path_rate=0.0)
        except Exception as exc:
            msg = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
            raise UserError(
                f"cannot get the ImageNet weights of {full} ({msg}); on a machine with internet run "
                f"`python -c \"import timm; timm.create_model('{full}', pretrained=True)\"` to fill "
                "the Hugging Face cache, or download the weights file and pass --pretrained_path FILE"
            ) from None
        vit.load_state_dict(loaded.state_dict())
    vit.pos_embed.requires_grad_(False)
    # the ImageNet head is kept for the checkpoint layout but never used: freezing it changes
    # nothing (AdamW skips parameters without gradients) and lets DDP run without
    # find_unused_parameters
    vit.head.requires_grad_(False)
    return vit


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


def vit_token_maps(vit: VisionTransformer, x: torch.Tensor, aux_layer: int,
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
    for i, block in enumerate(vit.blocks):
        tokens = block(tokens)
        if i == aux_index:
            aux = tokens
            if not final:
                break

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].transpose(1, 2).reshape(b, -1, h, w)

    if not final:
        return None, to_map(aux)
    return to_map(vit.norm(tokens)), to_map(aux)
