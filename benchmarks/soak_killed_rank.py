"""Run the killed-rank restart test N times in a row while a CPU-heavy neighbour runs beside it.

    python benchmarks/soak_killed_rank.py --runs 10 [--neighbour learning] [--json out.json]

The neighbour (``tests/test_learning.py``'s demo-learning test, restarted whenever it ends) keeps
the machine's cores busy, as on a shared node. Each run of
``tests/test_reliability.py::test_a_killed_rank_is_restarted_and_the_run_resumes_to_the_uninterrupted_state``
is timed; the JSON lists each run's outcome and seconds. Exit 1 if any run failed.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.common import write_result  # noqa: E402
from utils.help_format import DefaultsHelpFormatter  # noqa: E402
TEST = ("tests/test_reliability.py::"
        "test_a_killed_rank_is_restarted_and_the_run_resumes_to_the_uninterrupted_state")
NEIGHBOURS = {
    "learning": ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_learning.py", "-k",
                 "test_demo_students_and_cams_learn_well_above_the_all_background_baseline"],
    "none": None,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="how many times the test runs in a row")
    p.add_argument("--neighbour", choices=sorted(NEIGHBOURS), default="learning",
                   help="the CPU-heavy process beside it")
    p.add_argument("--json", help="write the runs here")
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=REPO)
    neighbour, neighbour_runs = None, 0

    def keep_neighbour_running():
        nonlocal neighbour, neighbour_runs
        if NEIGHBOURS[args.neighbour] and (neighbour is None or neighbour.poll() is not None):
            neighbour = subprocess.Popen([sys.executable, *NEIGHBOURS[args.neighbour]], cwd=REPO, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            neighbour_runs += 1

    runs = []
    try:
        for i in range(args.runs):
            keep_neighbour_running()
            start = time.time()
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
                                 cwd=REPO, env=env, capture_output=True, text=True)
            seconds = round(time.time() - start, 1)
            ok = res.returncode == 0
            runs.append({"run": i + 1, "passed": ok, "seconds": seconds,
                         "neighbour_running": neighbour is not None and neighbour.poll() is None})
            print(f"run {i + 1}: {'passed' if ok else 'FAILED'} in {seconds} s", flush=True)
            if not ok:
                print(res.stdout[-3000:], flush=True)
    finally:
        if neighbour is not None and neighbour.poll() is None:
            os.killpg(neighbour.pid, signal.SIGKILL)   # pytest and the training it started
            neighbour.wait()
    summary = write_result(args.json, "soak_killed_rank.py", {
        "test": TEST, "neighbour": args.neighbour, "neighbour_starts": neighbour_runs,
        "passed": sum(r["passed"] for r in runs), "runs": runs,
        "max_seconds": max((r["seconds"] for r in runs), default=None),
    })
    print(f"{summary['passed']} of {len(runs)} passed; longest {summary['max_seconds']} s")
    return 0 if summary["passed"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
