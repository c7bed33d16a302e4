"""Distributed set-up: torchrun's environment when present, one process otherwise.

Launch with ``python -m torch.distributed.run --nproc_per_node=N script.py ...`` (NCCL on GPUs,
gloo on CPU; multi-node through torchrun's own flags) or as a plain ``python script.py ...``.

Joining the process group has its own deadline (``join_timeout_s``, the scripts' ``--join_timeout``):
a rank that cannot join in time prints one line and exits, so that torchrun's next restart can try
again, instead of waiting for the collective timeout. Under torchrun the ranks of each attempt meet
in a store of that attempt (:func:`attempt_store`), never in the keys an earlier attempt left behind.
See docs/usage.md#restarts-and-joining.
"""
import datetime
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from utils.errors import UserError

JOIN_TIMEOUT_S = 300.0
ATTEMPT_KEY = "dupl/attempt_store"       # "<port> <token>" of the current attempt's store


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


def init_distributed(timeout_s: int = 5400, cpu: bool = False, require_gpu: bool = False,
                     join_timeout_s: float = JOIN_TIMEOUT_S) -> DistInfo:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), or run
    as a single process. Each process uses GPU ``LOCAL_RANK`` when GPUs exist (unless ``cpu``).
    ``require_gpu``: without ``cpu``, a machine where CUDA cannot be used is a one-line error
    instead of a silent CPU run (training). ``timeout_s`` bounds each collective once joined;
    ``join_timeout_s`` bounds the join itself (:func:`join_process_group`)."""
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
        join_process_group("nccl" if use_cuda else "gloo", rank, world, timeout_s, join_timeout_s,
                           device if use_cuda else None)
    return DistInfo(rank, world, local, device)


def join_process_group(backend: str, rank: int, world: int, timeout_s: float, join_timeout_s: float,
                       device_id: Optional[torch.device] = None) -> None:
    """``init_process_group`` within ``join_timeout_s`` seconds; otherwise ``error: ...`` on one
    line and exit status 1, which torchrun answers with a restart while restarts are left.

    The deadline is a timer as well as the store's timeout: a rank can wait inside gloo's or
    NCCL's connection set-up (C++, no Python exception) for far longer than the timeout given to
    them. Once joined, collectives and the store wait ``timeout_s``."""
    if join_timeout_s <= 0:
        raise UserError(f"--join_timeout must be positive (got {join_timeout_s:g})")
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"

    def message(reason: str) -> str:
        return (f"error: rank {rank} could not join the {backend} process group of {world} ranks at {where}: "
                f"{reason}; exiting so that torchrun can restart the workers "
                f"(docs/usage.md#restarts-and-joining)")

    def give_up() -> None:
        print(message(f"no answer within --join_timeout {join_timeout_s:g} s"), file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(join_timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        store = attempt_store(rank, world, join_timeout_s)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), device_id=device_id)
        store.set_timeout(datetime.timedelta(seconds=timeout_s))
    except RuntimeError as exc:        # the store's or the backend's own timeout or refusal
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        print(message(reason), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        timer.cancel()


def attempt_store(rank: int, world: int, join_timeout_s: float) -> dist.Store:
    """The key-value store the ranks of this launch (this torchrun attempt) meet in.

    Without torchrun's agent store, torch's ``env://`` store: rank 0 serves it at
    ``MASTER_ADDR:MASTER_PORT`` for this launch only. Under torchrun
    (``TORCHELASTIC_USE_AGENT_STORE=True``) that address is the agent's store, which outlives
    worker restarts and still holds the previous attempt's keys under the same names (gloo's
    listening addresses, NCCL's unique id); a rank that reads one before its peer rewrites it
    connects to a dead process: "Connection refused", or both ranks waiting for the other to
    connect. So rank 0 serves a store of its own on a free port and publishes ``"<port> <token>"``
    under :data:`ATTEMPT_KEY` in the agent's store; another rank takes the published store only
    once it answers with the token. A stale entry cannot: its rank 0 was stopped before this
    attempt started, so nothing (or something else) listens at its port."""
    timeout = datetime.timedelta(seconds=join_timeout_s)
    base, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return base
    host = os.environ["MASTER_ADDR"]
    if rank == 0:
        token = uuid.uuid4().hex
        store = dist.TCPStore(host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        store.set("token", token)
        base.set(ATTEMPT_KEY, f"{store.port} {token}")
        return store
    while True:
        port, token = base.get(ATTEMPT_KEY).decode().split()
        store = _open_store(host, int(port), world, token)
        if store is not None:
            store.set_timeout(timeout)
            return store
        time.sleep(0.5)


def _open_store(host: str, port: int, world: int, token: str) -> Optional[dist.Store]:
    """A client of the store at ``host:port`` if it holds ``token``, else None."""
    try:
        socket.create_connection((host, port), timeout=5).close()   # a dead port refuses quietly
        store = dist.TCPStore(host, port, world, is_master=False, timeout=datetime.timedelta(seconds=10))
        if store.check(["token"]) and store.get("token").decode() == token:
            return store
    except (OSError, RuntimeError):
        pass
    return None


def _several_ranks() -> bool:
    """Whether a process group of more than one rank is running (else every collective below is
    the single process's own value)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def from_main_rank(value):
    """``value`` as the main rank has it, on every rank (the value itself in a single process)."""
    if _several_ranks():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on some rank (``flag`` itself in a single process)."""
    if _several_ranks():
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
    return flag


def same_on_every_rank(value: int, device: torch.device) -> bool:
    """Whether every rank passed the same integer ``value`` (always true in a single process)."""
    if _several_ranks():
        t = torch.tensor([value, -value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)          # max of value and of -value: -min
        return bool(t[0] == -t[1])
    return True


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (no-op in a single process)."""
    if _several_ranks():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
