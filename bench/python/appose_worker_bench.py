"""Appose script-worker overhead: `python3 -m tessera.worker` vs a thread-per-task
Appose worker (tests/python/appose_worker.py, the reference worker's scheduling).

usage: PYTHONPATH=build/release/python /usr/bin/python3 bench/python/appose_worker_bench.py [--reps 5] [--tasks 400]

Cases, each repeated --reps times on a fresh worker process, one JSON line each:
  seq_rt      sequential trivial tasks ("1"), one in flight: ms per round trip
  burst       --tasks trivial tasks sent at once from 4 threads: ms until all finished,
              and how many finished exactly once
A summary line gives medians, min-max spread, and tessera/peer ratios.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python"))
from appose_host import TERMINAL, ApposeHost  # noqa: E402

PY = sys.executable
WORKERS = {
    "tessera": [PY, "-m", "tessera.worker"],
    "thread_per_task": [PY, os.path.join(HERE, "..", "..", "tests", "python", "appose_worker.py")],
}


def seq_rt(argv, n):
    h = ApposeHost(argv)
    try:
        h.run("1", timeout=60)  # warm up: interpreter and imports
        t0 = time.perf_counter()
        for _ in range(n):
            h.wait(h.start("1"), 60, settle=0)
        return (time.perf_counter() - t0) / n * 1e3
    finally:
        h.close()


def burst(argv, n, timeout=20.0):
    h = ApposeHost(argv)
    try:
        h.run("1", timeout=60)
        ids = []
        lock = threading.Lock()

        def submit(k):
            for i in range(n // 4):
                t = h.start("i + k", {"i": i, "k": k})
                with lock:
                    ids.append(t)

        t0 = time.perf_counter()
        ths = [threading.Thread(target=submit, args=(k,)) for k in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        h.wait_for(lambda: all(any(m["responseType"] in TERMINAL for _, m in h.msgs.get(t, [])) for t in ids), timeout)
        ms = (time.perf_counter() - t0) * 1e3
        once = sum(1 for t in ids if sum(m["responseType"] in TERMINAL for _, m in h.msgs.get(t, [])) == 1)
        return ms, once, len(h.invalid)
    finally:
        h.close(5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--seq", type=int, default=300)
    a = p.parse_args()
    res = {w: {"seq_ms": [], "burst_ms": [], "once": [], "invalid": []} for w in WORKERS}
    for _ in range(a.reps):
        for name, argv in WORKERS.items():  # interleaved, so load changes hit both
            rt = seq_rt(argv, a.seq)
            ms, once, bad = burst(argv, a.tasks)
            res[name]["seq_ms"].append(rt)
            res[name]["burst_ms"].append(ms)
            res[name]["once"].append(once)
            res[name]["invalid"].append(bad)
            print(json.dumps({"worker": name, "seq_rt_ms": round(rt, 4), "burst_ms": round(ms, 1),
                              "finished_once": once, "of": a.tasks, "invalid_lines": bad}), flush=True)
    med = {w: {k: statistics.median(v) for k, v in r.items()} for w, r in res.items()}
    spread = {w: {k: [round(min(v), 3), round(max(v), 3)] for k, v in r.items()} for w, r in res.items()}
    print(json.dumps({"summary": med, "spread": spread,
                      "ratio_seq_rt_tessera_over_peer": round(med["tessera"]["seq_ms"] / med["thread_per_task"]["seq_ms"], 3),
                      "ratio_burst_tessera_over_peer": round(med["tessera"]["burst_ms"] / med["thread_per_task"]["burst_ms"], 3)}))


if __name__ == "__main__":
    main()
