"""Checkpoint files: the one module that reads and writes them.

- Reading (:func:`read_checkpoint`): a file of this project or of the original DuPL code, within
  budgets, without running code (docs/data.md#untrusted-files).
- The state-dict forms (:func:`network_state`): both use the same key layout
  (``branch1.encoder...``, ``branch2.decoder.conv8.weight``...); a ``module.`` prefix from
  DistributedDataParallel is stripped, the state dict may be bare or under ``model`` /
  ``state_dict``. Loading it into a network (which needs the encoder's knowledge of its layout) is
  :func:`model.network.load_network`.
- Writing (:func:`save_checkpoint`): atomically, through a private temporary file
  (:func:`utils.safe_io.write_atomically`).

What a training checkpoint records (the run state, the saved-arguments contract) is
:mod:`engine.run_state`.
"""
import os
import pickle
import re
import zipfile
from typing import Dict

import numpy as np
import torch

from utils.errors import Refused, UserError
from utils.pickle_scan import CHECKPOINT_GLOBALS, check_tree, scan_pickle
from utils.safe_io import check_zip, write_atomically

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
    anything (:func:`utils.pickle_scan.scan_pickle`); after, the object's depth, entry count and
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


def save_checkpoint(path: str, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (a private temporary file in the same folder,
    renamed over ``path``; never through a link)."""
    write_atomically(path, lambda f: torch.save(payload, f), binary=True)
