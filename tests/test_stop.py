"""Stop requests (utils/stop.py) inside validation: every rank stops before the same image, even
when only one rank was signalled and the shards differ in length; the loader workers of a rank that
handles stop requests survive the signal. The whole run (signal during validation, checkpoint,
relaunch) is tested in tests/test_reliability.py."""
import os
import signal
import subprocess
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from model.network import DualStudentNet
from utils.stop import StopRequest, StopRequested, ignore_stop_signals
from engine.validation import validate


class Images(torch.utils.data.Dataset):
    """``n`` random images; fetching item ``signal_at`` sends SIGUSR1 to this process."""

    def __init__(self, n: int, signal_at: int = -1):
        self.n, self.signal_at = n, signal_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        g = torch.Generator().manual_seed(i)
        mask = torch.randint(0, 21, (32, 32), generator=g)
        label = torch.zeros(20)
        label[i % 20] = 1
        return f"img{i}", torch.randn(3, 32, 32, generator=g), mask, label


def _net():
    torch.manual_seed(0)
    return DualStudentNet("deit_tiny_patch16_224", 21).eval()


def _validate_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    # 5 images: rank 0 scores 0, 2, 4 and rank 1 scores 1, 3; only rank 1 is signalled, while it
    # fetches its last image, so it has none left when the stop is seen before the third
    data = Images(5, signal_at=3 if rank == 1 else -1)
    seen = []
    stop = StopRequest()
    real = stop.requested
    stop.requested = lambda device: seen.append(1) or real(device)
    try:
        validate(_net(), data, torch.device("cpu"), rank, world, crop_size=32, cam_scales=(1.0,),
                 num_workers=0, stop=stop)
        result = "finished"
    except StopRequested:
        result = f"stopped by {stop.name}"
    finally:
        stop.restore()
    dist.barrier()
    out.put((rank, result, len(seen)))
    dist.destroy_process_group()


def test_every_rank_stops_before_the_same_image_when_one_rank_is_signalled():
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_validate_worker, args=(2, 29500 + (os.getpid() + 250) % 1000, out), nprocs=2,
                       start_method="spawn")
    got = sorted(out.get() for _ in range(2))
    assert got == [(0, "stopped by a signal to another rank", 3), (1, "stopped by SIGUSR1", 3)]


def test_validation_without_a_stop_request_is_unchanged_by_the_checks():
    stop = StopRequest()
    try:
        with_stop = validate(_net(), Images(3), torch.device("cpu"), crop_size=32, cam_scales=(1.0,),
                             num_workers=0, stop=stop)
    finally:
        stop.restore()
    plain = validate(_net(), Images(3), torch.device("cpu"), crop_size=32, cam_scales=(1.0,), num_workers=0)
    assert with_stop["num_images"] == plain["num_images"] == 3
    for column, scores in plain["scores"].items():
        assert scores["miou"] == with_stop["scores"][column]["miou"]


def test_a_stop_request_in_one_process_ends_validation_before_the_next_image():
    net = _net().train()
    stop = StopRequest()
    try:
        with pytest.raises(StopRequested, match="SIGUSR1"):
            validate(net, Images(4, signal_at=1), torch.device("cpu"), crop_size=32, cam_scales=(1.0,),
                     num_workers=0, stop=stop)
    finally:
        stop.restore()
    assert net.training                     # the network is handed back in its mode
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


class Pids(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i == 0:                          # every worker (and, after that, its siblings) is signalled
            os.kill(os.getpid(), signal.SIGTERM)
        return os.getpid()


def test_loader_workers_of_a_stoppable_rank_survive_the_signal():
    loader = DataLoader(Pids(), batch_size=None, num_workers=2, worker_init_fn=ignore_stop_signals)
    pids = list(loader)
    assert len(pids) == 6 and os.getpid() not in pids
    # without it the worker dies of the signal and the loader raises
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        list(DataLoader(Pids(), batch_size=None, num_workers=1))


def test_a_worker_ignores_the_clusters_signal_but_not_its_rank_shutting_it_down():
    loader = DataLoader(list(range(100)), batch_size=None, num_workers=1, worker_init_fn=ignore_stop_signals)
    items = iter(loader)
    next(items)
    (worker,) = items._workers
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)       # another process: ignored
    subprocess.run(["kill", "-USR1", str(worker.pid)], check=True)
    time.sleep(1)
    assert worker.is_alive() and next(items) == 1
    worker.terminate()                                                   # its rank: it ends
    worker.join(timeout=10)
    assert not worker.is_alive()
