"""Does a torchrun restart rejoin? Two gloo workers under torchrun (c10d rendezvous, one restart
allowed); in the first attempt rank 1 kills itself, in the second rank 0 joins ``--delay``
seconds late (a loaded machine), so rank 1 may read what the first attempt left in torchrun's
store before rank 0 rewrites it.

    python benchmarks/repro_restart.py --join torch project --trials 10 --json out.json

``--join torch``: a plain ``init_process_group``; ``--join project``: utils.distributed's join.

Each trial is ``joined`` (the second attempt all-reduced and exited 0), ``refused`` (gloo:
Connection refused), ``stuck`` (gloo's connect timeout, or still waiting at ``--trial_timeout``)
or ``join_timeout`` (the project's one-line exit). ``stale_key`` says whether the first attempt's
key (torch: rank 0's gloo address; project: the attempt store's address) was still in torchrun's
store when the second attempt started.
"""
import argparse
import datetime
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.common import write_result  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402

STALE_GLOO_KEY = "default_pg/0//cpu//0/0"     # torch's key of rank 0's gloo address (plain init)


def worker(args) -> None:
    """One torchrun worker (``--worker``)."""
    import torch
    import torch.distributed as dist
    rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    if attempt > 0 and rank == 1:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=30))
        from utils.distributed import ATTEMPT_KEY
        key = STALE_GLOO_KEY if args.join == "torch" else ATTEMPT_KEY
        print(f"stale_key={store.check([key])}", flush=True)
    if attempt > 0 and rank == 0:
        time.sleep(args.delay)
    start = time.time()
    if args.join == "torch":
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.pg_timeout))
    else:
        from utils.distributed import join_process_group
        join_process_group("gloo", rank, int(os.environ["WORLD_SIZE"]), args.pg_timeout, args.join_timeout)
    t = torch.ones(1)
    dist.all_reduce(t)
    print(f"attempt {attempt} rank {rank} joined in {time.time() - start:.1f} s, sum {t.item():g}", flush=True)
    if attempt == 0:
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)                 # until torchrun stops this attempt
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial(args, join: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", os.path.abspath(__file__),
           "--worker", "--join", join, "--delay", str(args.delay), "--pg_timeout", str(args.pg_timeout),
           "--join_timeout", str(args.join_timeout)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=args.trial_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    seconds = round(time.time() - start, 1)
    if proc.returncode == 0 and out.count("attempt 1 rank") == 2:
        outcome = "joined"
    elif "could not join" in out:
        outcome = "join_timeout"
    elif "Connection refused" in out and "Connect timeout" not in out:
        outcome = "refused"
    else:
        outcome = "stuck"
    return {"outcome": outcome, "seconds": seconds, "stale_key": "stale_key=True" in out}


def main() -> None:
    p = argparse.ArgumentParser(description="torchrun restart: does the second attempt join?",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--join", choices=("torch", "project"), nargs="+", default=["torch", "project"],
                   help="torch: plain init_process_group; project: utils.distributed.join_process_group")
    p.add_argument("--trials", type=int, default=6, help="torchrun launches")
    p.add_argument("--delay", type=float, default=0.3, help="seconds rank 0 joins late in the second attempt")
    p.add_argument("--pg_timeout", type=int, default=30, help="process-group timeout (seconds)")
    p.add_argument("--join_timeout", type=float, default=60, help="the project's join deadline (seconds)")
    p.add_argument("--trial_timeout", type=float, default=120, help="a trial still running then is stuck")
    p.add_argument("--json", help="write the trials to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.join = args.join[0]
        return worker(args)
    results = {}
    for join in args.join:
        trials = []
        for i in range(args.trials):
            trials.append(trial(args, join))
            print(f"--join {join} trial {i + 1}: {trials[-1]}", flush=True)
        counts = {k: sum(t["outcome"] == k for t in trials) for k in ("joined", "refused", "stuck", "join_timeout")}
        print(f"--join {join}: {counts}", flush=True)
        results[join] = {"counts": counts, "trials": trials}
    write_result(args.json, "repro_restart.py", {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")}, "results": results})


if __name__ == "__main__":
    main()
