"""``--amp``: bf16 autocast on the device that runs, the one place every script goes through.

``--amp`` runs the network under ``torch.autocast(dtype=torch.bfloat16)`` on the device of the
run: a GPU with bf16 (Ampere or newer) or a CPU with bf16 arithmetic (x86 AVX512-BF16 or AMX,
Arm BF16). Losses, CAM normalisation, PAR, the GMM and the metrics stay float32 (each casts
its input). Where the device has no bf16 arithmetic, autocast would emulate it (slower than
fp32, no memory saved), so :func:`resolve_amp` says so in one line and the run goes on in fp32.
Speed and learning under CPU bf16: docs/performance.md#bf16-on-the-cpu.
"""
import argparse
import contextlib
import functools
import os
import platform
import sys
from typing import Callable, Optional

import torch

AMP_HELP = ("bf16 autocast on the device that runs: a GPU with bf16 (Ampere or newer) or a CPU with "
            "bf16 arithmetic (AVX512-BF16, AMX, Arm BF16); elsewhere one line says so and the run is fp32")

_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def add_amp_flag(parser) -> None:
    """``--amp/--no-amp`` (off by default) with the one help text."""
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                        help=AMP_HELP)


def _cpuinfo(keys, path: str = "/proc/cpuinfo") -> Optional[str]:
    """The value of the first line of ``/proc/cpuinfo`` whose key is one of ``keys``, or None where
    the file is missing or has no such line."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        return None
    return None


def _linux_cpu_flags(path: str = "/proc/cpuinfo") -> Optional[set]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``),
    or None where the file is missing or says nothing of them."""
    value = _cpuinfo(("flags", "Features"), path)
    return None if value is None else set(value.split())


def cpu_description() -> str:
    """``N CPU cores (model)``: the cores this process may use and the CPU's model name, for logs
    and result files (the model decides the kernels, so the last digits of the numbers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({_cpuinfo(('model name',)) or platform.machine()})"


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic: the kernel's CPU flags on Linux, oneDNN's own test
    elsewhere."""
    flags = _linux_cpu_flags()
    if flags is not None:
        return bool(flags & _BF16_CPU_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def device_has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_bf16()
    return True


def resolve_amp(requested: bool, device: torch.device, say: Callable[[str], None] = None) -> bool:
    """``--amp`` as it will run on ``device``: True only when asked for and the device has bf16;
    when asked for on a device without it, one line through ``say`` (default: stderr) and False."""
    if not requested:
        return False
    if device_has_bf16(device):
        return True
    what = "this CPU has no bf16 arithmetic (AVX512-BF16, AMX or Arm BF16)" if device.type == "cpu" else \
        f"{device} has no bf16 (a GPU older than Ampere)"
    (say or (lambda line: print(line, file=sys.stderr)))(f"--amp: {what}; running in fp32")
    return False


def autocast(device: torch.device, enabled: bool):
    """The network's precision context: bf16 autocast on ``device`` when ``enabled`` (already
    resolved by :func:`resolve_amp`), else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
