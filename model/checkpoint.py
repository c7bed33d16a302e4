"""Loading network weights saved by this project or by the original DuPL code.

Both use the same key layout (``branch1.encoder...``, ``branch2.decoder.conv8.weight``...); a
``module.`` prefix from DistributedDataParallel is stripped. The state dict may be bare or under
``model``/``state_dict``. A checkpoint of another backbone or class count is refused with a
one-line error that says which.
"""
import os
import pickle
import re
import zipfile
from typing import Dict

import numpy as np
import torch
import torch.nn as nn

from datasets.errors import UserError
from datasets.untrusted import CHECKPOINT_GLOBALS, Refused, check_tree, check_zip, scan_pickle

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
# budgets of a checkpoint (docs/data.md#untrusted-files): its pickle (the structure, without the
# tensors' bytes) is a few hundred KB for a ViT-L network with its optimiser state
MAX_PICKLE_BYTES = 64 << 20
MAX_DEPTH = 16            # a training checkpoint nests 5 deep (optimizer -> state -> id -> name)
MAX_NODES = 2_000_000     # entries, a shared one counted each time it is reached
SLACK_BYTES = 16 << 20    # tensors may declare their records' bytes, plus this


def read_checkpoint(path: str) -> dict:
    """The object of a checkpoint file: tensors, numbers, strings, containers and plain numpy
    arrays only, within budgets. Before ``torch.load(weights_only=True)`` reads it, its zip
    records are checked (stored, fitting the file) and its pickle is walked without building
    anything (:func:`datasets.untrusted.scan_pickle`); after, the object's depth, entry count and
    bytes are bounded counting shared entries each time. Anything else is refused in one line."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; check --model_path / --resume")
    size = os.path.getsize(path)
    fix = "; re-save it with torch.save in a current PyTorch where the file comes from a source you trust"
    if not zipfile.is_zipfile(path):
        raise UserError(f"cannot read checkpoint {path}: not a PyTorch checkpoint in zip format (the "
                        "format torch.save writes since PyTorch 1.6); the file is incomplete or of "
                        "another kind" + fix)
    members = check_zip(path, "checkpoint", max_member=size, fix=fix)
    pickles = [n for n in members if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise UserError(f"cannot read checkpoint {path}: it holds {len(pickles)} data.pkl records, "
                        "not one; the file is incomplete or not a PyTorch checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    if members[pickles[0]].file_size > MAX_PICKLE_BYTES:
        raise UserError(f"refused checkpoint {path}: its structure is {members[pickles[0]].file_size >> 20} "
                        f"MiB, more than the {MAX_PICKLE_BYTES >> 20} MiB a network's needs{fix}")
    storages = {n[len(prefix) + 5:]: i.file_size for n, i in members.items()
                if n.startswith(prefix + "data/")}
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(pickles[0])
        scan_pickle(data, CHECKPOINT_GLOBALS, max_bytes=size + SLACK_BYTES, storages=storages)
    except Refused as exc:
        raise UserError(f"refused checkpoint {path}: it holds {exc}; {UNSAFE_HINT}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {path} ({str(exc)[:200]}); the file is incomplete "
                        "or not a PyTorch checkpoint") from None
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported" not in str(exc):   # a damaged file, not a refused one
            raise UserError(f"cannot read checkpoint {path} ({str(exc).splitlines()[0][:200]}); the "
                            "file is incomplete or not a PyTorch checkpoint") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = (f"Python objects other than weights ({found.group(1)})" if found else
                f"pickle instructions the weights-only reader refuses ({str(exc).splitlines()[0][:120]})")
        raise UserError(f"refused checkpoint {path}: it holds {what}; {UNSAFE_HINT}") from None
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                        "the file is incomplete or not a PyTorch checkpoint") from None
    try:
        check_tree(obj, MAX_DEPTH, MAX_NODES, size + SLACK_BYTES)
    except Refused as exc:
        raise UserError(f"refused checkpoint {path}: it holds {exc}; a checkpoint holds tensors "
                        "and shallow dicts/lists of settings" + fix) from None
    return obj


def network_state(obj: dict) -> Dict[str, torch.Tensor]:
    """The network's state dict inside a checkpoint object, without ``module.`` prefixes."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError("checkpoint holds no state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def saved_args(obj) -> dict:
    """The training arguments this project saves with a checkpoint (``obj["args"]``), else ``{}``."""
    return obj["args"] if isinstance(obj, dict) and isinstance(obj.get("args"), dict) else {}


def describe_backbone(state: Dict[str, torch.Tensor], prefix: str = "branch1.encoder.") -> str:
    """``a ViT-tiny/16 (12 blocks, width 192)``; other layouts add what tells them apart: register
    tokens, no class token, no learned position embedding (RoPE), pre-norm, LayerScale."""
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


def load_network(net: nn.Module, path_or_state, source: str = "checkpoint") -> None:
    """Load a checkpoint (path or state dict) into a :class:`DualStudentNet`, strictly."""
    if isinstance(path_or_state, str):
        source = path_or_state
        path_or_state = read_checkpoint(path_or_state)
    state = network_state(path_or_state)
    own = net.state_dict()
    if "branch1.encoder.patch_embed.proj.weight" not in state or "branch1.decoder.conv8.weight" not in state:
        raise UserError(f"{source} is not a DuPL network checkpoint (no branch1.encoder / "
                        "branch1.decoder weights)")
    theirs_c = state["branch1.decoder.conv8.weight"].shape[0]
    if theirs_c != net.num_classes:
        raise UserError(f"{source} was trained with {theirs_c} classes but this network has "
                        f"{net.num_classes}; use the script of the dataset it was trained on")
    ours_b, theirs_b = describe_backbone(own), describe_backbone(state)
    pos = "branch1.encoder.pos_embed"
    if ours_b != theirs_b or (pos in own and pos in state and own[pos].shape != state[pos].shape):
        raise UserError(f"{source} holds {theirs_b} but --backbone {net.backbone_name} is "
                        f"{ours_b}; pass the backbone it was trained with")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not match the network: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    net.load_state_dict(state, strict=True)
