"""The run state a training checkpoint records, and the saved-arguments contract.

- :func:`checkpoint_payload`: everything a resume needs (weights, optimiser, step, RNG states,
  the run's arguments and config, the best score).
- A checkpoint records the run's arguments (``args``); the model flags a script leaves unset are
  taken from them (:func:`model_settings`, :func:`adopt_model_flags`, :func:`saved_input_stats`),
  and a flag that contradicts them is refused; a saved setting of the wrong kind (a crafted file)
  is refused in one line.

Reading and writing the files themselves is :mod:`utils.checkpoint`.
"""
import random
from dataclasses import asdict
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from utils.checkpoint import network_state, read_checkpoint
from utils.errors import UserError


def saved_args(obj) -> dict:
    """The training arguments this project saves with a checkpoint (``obj["args"]``), else ``{}``."""
    return obj["args"] if isinstance(obj, dict) and isinstance(obj.get("args"), dict) else {}


def plain(value):
    """``value`` as data that ``torch.load(weights_only=True)`` reads: containers of str, numbers,
    bools and None; anything else becomes its string."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def rng_state() -> Dict[str, object]:
    """The RNG states as plain data (tensors, numbers, lists), which ``weights_only`` loading reads."""
    version, mt_state, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, object]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in mt_state), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.int64).astype(np.uint32), int(pos),
                         int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_payload(net, optimizer, step: int, args, cfg, best: float,
                       miou: Optional[Dict[str, float]] = None, validation_due: bool = False) -> dict:
    """Everything resume needs: weights, optimiser, step, RNG states, the run's arguments and
    config (a dataclass), the best validation score so far (mean Seg mIoU of the two students) and,
    with ``validation_due``, that the validation after ``step`` was stopped and is still to run."""
    payload = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
               "rng": rng_state(), "args": plain(vars(args)), "config": plain(asdict(cfg)),
               "best_miou": float(best)}
    if miou is not None:
        payload["miou"] = plain(miou)
    if validation_due:
        payload["validation_due"] = True
    return payload


# ------------------------------------------------------------------------------ saved arguments
def saved_backbone_args(obj, source: str = "checkpoint") -> Optional[str]:
    """The architecture overrides (``--backbone_args``) a checkpoint of this project was trained
    with, or None."""
    value = _saved_setting(saved_args(obj), "backbone_args", source)
    return str(value) if value else None


STRING_SETTINGS = ("backbone", "backbone_args")
STATS_SETTINGS = ("input_mean", "input_std")


def _saved_setting(saved: dict, key: str, source: str):
    """``saved[key]`` when it is of its kind: a short name (``backbone``, ``backbone_args``), a
    number (``num_classes``, ``aux_layer``) or three numbers (``input_mean``, ``input_std``);
    anything else is a damaged or crafted file, refused in one line."""
    theirs = saved.get(key)
    if theirs is None:
        return None
    if key in STATS_SETTINGS:
        ok = isinstance(theirs, (list, tuple)) and len(theirs) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in theirs)
        kind = "three numbers"
    elif key in STRING_SETTINGS:
        ok, kind = isinstance(theirs, str) and len(theirs) <= 200, "name"
    else:
        ok, kind = isinstance(theirs, int) and not isinstance(theirs, bool), "number"
    if not ok:
        article = "" if kind == "three numbers" else "a "
        raise UserError(f"refused checkpoint {source}: its saved {key} is a {type(theirs).__name__}, "
                        f"not {article}{kind}; the file is damaged or crafted")
    return [float(v) for v in theirs] if key in STATS_SETTINGS else theirs


def saved_input_stats(obj, source: str) -> Tuple[Optional[list], Optional[list]]:
    """The input mean and std a checkpoint of this project was trained with (``None`` each for an
    older or the original's checkpoint: its backbone's statistics apply)."""
    saved = saved_args(obj)
    return _saved_setting(saved, "input_mean", source), _saved_setting(saved, "input_std", source)


def model_settings(obj, backbone: Optional[str], num_classes: Optional[int], aux_layer: Optional[int],
                   defaults: Dict[str, object], source: str) -> Tuple[str, int, Optional[int]]:
    """Backbone, class count and aux layer for the network of checkpoint object ``obj``.

    A flag left unset (None) comes from the checkpoint: the training arguments this project
    saves with it, or (an original checkpoint) the class count of its decoder; failing that,
    ``defaults``. A flag that contradicts the checkpoint's training arguments is a one-line error.
    An aux layer that is None everywhere stays None: the network's depth rule picks it."""
    saved = saved_args(obj)
    state = network_state(obj)
    depth = 1 + max((int(k.split(".")[3]) for k in state if k.startswith("branch1.encoder.blocks.")), default=11)
    same = {"backbone": lambda a, b: a == b, "num_classes": lambda a, b: int(a) == int(b),
            "aux_layer": lambda a, b: int(a) % depth == int(b) % depth}
    defaults = dict(defaults, aux_layer=defaults.get("aux_layer"))
    given = {"backbone": backbone, "num_classes": num_classes, "aux_layer": aux_layer}
    out = {}
    for key, value in given.items():
        theirs = _saved_setting(saved, key, source)
        if key == "num_classes" and theirs is None and "branch1.decoder.conv8.weight" in state:
            theirs = int(state["branch1.decoder.conv8.weight"].shape[0])
        if value is not None and theirs is not None and not same[key](value, theirs):
            raise UserError(f"--{key} {value} contradicts {source}, trained with {key} {theirs}; "
                            f"leave --{key} out to use the checkpoint's")
        out[key] = value if value is not None else (theirs if theirs is not None else defaults[key])
    aux = out["aux_layer"]
    return str(out["backbone"]), int(out["num_classes"]), None if aux is None else int(aux)


def resolve_model_flags(args, defaults: Dict[str, object]) -> dict:
    """Read ``args.model_path`` once, fill ``args.backbone`` / ``num_classes`` / ``aux_layer``
    that were left out (:func:`model_settings`) and ``args.input_mean`` / ``input_std`` (the
    checkpoint's, None for an older one: :func:`saved_input_stats`), and return the checkpoint
    object."""
    obj = read_checkpoint(args.model_path)
    args.backbone, args.num_classes, args.aux_layer = model_settings(
        obj, args.backbone, args.num_classes, args.aux_layer, defaults, args.model_path)
    args.input_mean, args.input_std = saved_input_stats(obj, args.model_path)
    return obj


def adopt_model_flags(args, ckpt: dict, defaults: dict, log) -> None:
    """On ``--resume``, model flags left at their defaults (``--backbone``, ``--backbone_args``,
    ``--aux_layer``, ``--input_mean``, ``--input_std``) take the values the checkpoint was trained
    with, so a DINOv2 or CLIP run resumes without them; saved values of the wrong kind are refused
    as :func:`model_settings` refuses them, and input statistics that contradict the checkpoint's
    are refused. ``log`` reports each adopted flag."""
    saved = saved_args(ckpt)
    keys = (("backbone", defaults["backbone"]), ("backbone_args", None), ("aux_layer", None),
            ("input_mean", None), ("input_std", None))
    for key, default in keys:
        theirs = _saved_setting(saved, key, args.resume)
        given = getattr(args, key, None)
        if key in STATS_SETTINGS and theirs is not None and given is not None \
                and [float(v) for v in given] != theirs:
            raise UserError(f"--{key} {','.join(f'{v:g}' for v in given)} contradicts {args.resume}, "
                            f"trained with {key} {','.join(f'{v:g}' for v in theirs)}; leave --{key} "
                            "out to use the checkpoint's")
        if theirs is not None and given == default and theirs != default:
            setattr(args, key, theirs)
            log(f"--{key} {theirs} (from {args.resume})")
