"""Distributed set-up: torchrun's environment when present, one process otherwise.

Launch with ``python -m torch.distributed.run --nproc_per_node=N script.py ...`` (NCCL on GPUs,
gloo on CPU; multi-node through torchrun's own flags) or as a plain ``python script.py ...``.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from datasets.errors import UserError


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_s: int = 5400, cpu: bool = False, require_gpu: bool = False) -> DistInfo:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), or run
    as a single process. Each process uses GPU ``LOCAL_RANK`` when GPUs exist (unless ``cpu``).
    ``require_gpu``: without ``cpu``, a machine where CUDA cannot be used is a one-line error
    instead of a silent CPU run (training)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and not cpu
    if require_gpu and not cpu and not use_cuda:
        raise UserError("no usable CUDA device (torch.cuda.is_available() is False: no GPU, or a "
                        "driver too old for this torch build); pass --cpu to run on the CPU on purpose")
    device = torch.device("cuda", local % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if use_cuda else None)
    return DistInfo(rank, world, local, device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
