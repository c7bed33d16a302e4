"""Loading network weights saved by this project or by the original DuPL code.

Both use the same key layout (``branch1.encoder...``, ``branch2.decoder.conv8.weight``...); a
``module.`` prefix from DistributedDataParallel is stripped. The state dict may be bare or under
``model``/``state_dict``. A checkpoint of another backbone or class count is refused with a
one-line error that says which.
"""
import os
import pickle
import re
from typing import Dict

import numpy as np
import torch
import torch.nn as nn

from datasets.errors import UserError

VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large"}


# numpy arrays (plain dtypes) are data too: checkpoints of earlier runs kept numpy's RNG state
NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct
NUMPY_ARRAY_GLOBALS.append(_reconstruct)

UNSAFE_HINT = ("only tensors, numbers, strings, lists, dicts and numpy arrays are read, so that a "
               "checkpoint cannot run code when it is opened; re-save the weights alone "
               "(torch.save(obj['model'], path)) where the file comes from a source you trust")


def read_checkpoint(path: str) -> dict:
    """The object of a checkpoint file, read with ``torch.load(weights_only=True)``: tensors,
    numbers, strings, containers and plain numpy arrays only. A file that holds anything else
    (a class, a function: what a crafted file uses to run code) is refused in one line."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; check --model_path / --resume")
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported" not in str(exc):   # a damaged file, not a refused one
            raise UserError(f"cannot read checkpoint {path} ({str(exc).splitlines()[0][:200]}); the "
                            "file is incomplete or not a PyTorch checkpoint") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise UserError(f"refused checkpoint {path}: it holds Python objects other than "
                        f"weights{what}; {UNSAFE_HINT}") from None
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); the file "
                        "is incomplete or not a PyTorch checkpoint") from None


def network_state(obj: dict) -> Dict[str, torch.Tensor]:
    """The network's state dict inside a checkpoint object, without ``module.`` prefixes."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError("checkpoint holds no state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def describe_backbone(state: Dict[str, torch.Tensor], prefix: str = "branch1.encoder.") -> str:
    width = state[prefix + "cls_token"].shape[-1]
    depth = 1 + max(int(k[len(prefix + "blocks."):].split(".")[0])
                    for k in state if k.startswith(prefix + "blocks."))
    patch = state[prefix + "patch_embed.proj.weight"].shape[-1]
    size = VIT_SIZES.get(width, f"width-{width}")
    return f"a ViT-{size}/{patch} ({depth} blocks, width {width})"


def load_network(net: nn.Module, path_or_state, source: str = "checkpoint") -> None:
    """Load a checkpoint (path or state dict) into a :class:`DualStudentNet`, strictly."""
    if isinstance(path_or_state, str):
        source = path_or_state
        path_or_state = read_checkpoint(path_or_state)
    state = network_state(path_or_state)
    own = net.state_dict()
    if "branch1.encoder.cls_token" not in state or "branch1.decoder.conv8.weight" not in state:
        raise UserError(f"{source} is not a DuPL network checkpoint (no branch1.encoder / "
                        "branch1.decoder weights)")
    theirs_c = state["branch1.decoder.conv8.weight"].shape[0]
    if theirs_c != net.num_classes:
        raise UserError(f"{source} was trained with {theirs_c} classes but this network has "
                        f"{net.num_classes}; use the script of the dataset it was trained on")
    ours_b, theirs_b = describe_backbone(own), describe_backbone(state)
    if ours_b != theirs_b or own["branch1.encoder.pos_embed"].shape != state["branch1.encoder.pos_embed"].shape:
        raise UserError(f"{source} holds {theirs_b} but --backbone {net.backbone_name} is "
                        f"{ours_b}; pass the backbone it was trained with")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not match the network: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    net.load_state_dict(state, strict=True)
