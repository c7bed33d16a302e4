"""Run a command and print one JSON line: its exit code, stderr, wall seconds and peak resident
memory (MiB, the largest of its processes). Used by the untrusted-file tests:

    python tests/helpers/peak_rss.py python eval_seg_voc.py ...
"""
import json
import resource
import subprocess
import sys
import time

start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0   # KiB on Linux
print(json.dumps({"rc": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout[-2000:],
                  "seconds": seconds, "peak_mib": peak}))
