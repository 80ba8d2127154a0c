"""Appose-style tile transport in Python, as the Appose worker protocol does it per tile.

Host: create a new named POSIX segment (multiprocessing.shared_memory, names psm_xxxxxxxx),
write the tile with NumPy, send one JSON line over the worker's stdin. Worker: attach the
segment by name, read every byte (NumPy sum), close it, answer one JSON line. Host: on the
answer, close and unlink the segment.

Run by tessera-bench (never on its own in CI):
    appose_bench.py --size BYTES --count N --warmup W --inflight K
prints one JSON object: latencies (ns) of the measured tiles, wall time, CPU seconds.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from multiprocessing import shared_memory, resource_tracker

import numpy as np


def worker() -> int:
    expect = 0
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("task") == "stop":
            break
        shm = shared_memory.SharedMemory(name=msg["shm"])
        # Python 3.11 registers attached segments with the resource tracker too; the
        # host owns (and unlinks) them, so the worker must not.
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
        n = msg["size"]
        words = np.frombuffer(shm.buf, dtype=np.uint64, count=n // 8)
        stamp = int(words[0])
        _ = int(words.sum())  # read every byte
        del words
        shm.close()
        ok = stamp == msg["seq"] == expect
        expect += 1
        out.write(json.dumps({"seq": msg["seq"], "status": "done" if ok else "corrupt"}) + "\n")
        out.flush()
        if not ok:
            return 4
    return 0


def host(size: int, count: int, warmup: int, inflight: int) -> int:
    me = [sys.executable, os.path.abspath(__file__), "--worker"]
    w = subprocess.Popen(me, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    src = (np.arange(size, dtype=np.uint8) * 131).astype(np.uint8)
    total = warmup + count
    segs = {}
    sent_at = {}
    lat = []
    sent = done = 0
    t_start = time.monotonic_ns()
    cpu0 = time.process_time()
    rd = w.stdout
    while done < total:
        while sent < total and sent - done < inflight:
            t = time.monotonic_ns()
            shm = shared_memory.SharedMemory(create=True, size=size)
            arr = np.ndarray((size,), dtype=np.uint8, buffer=shm.buf)
            arr[:] = src
            arr[:8] = np.frombuffer(np.uint64(sent).tobytes(), dtype=np.uint8)
            del arr
            segs[sent] = shm
            sent_at[sent] = t
            line = json.dumps({"task": "tile", "seq": sent, "shm": shm.name, "size": size,
                               "dtype": "uint8", "shape": [size]}) + "\n"
            w.stdin.write(line.encode())
            w.stdin.flush()
            sent += 1
        reply = rd.readline()
        if not reply:
            print(json.dumps({"error": "worker closed its pipe"}))
            return 1
        msg = json.loads(reply)
        if msg["seq"] != done or msg["status"] != "done":
            print(json.dumps({"error": f"reply {msg} where {done} was due"}))
            return 1
        t = time.monotonic_ns()
        shm = segs.pop(done)
        shm.close()
        shm.unlink()
        if done >= warmup:
            lat.append(t - sent_at.pop(done))
        else:
            sent_at.pop(done)
        done += 1
        if done == warmup:
            t_start = t
    wall = (time.monotonic_ns() - t_start) * 1e-9
    w.stdin.write(b'{"task": "stop"}\n')
    w.stdin.flush()
    w.stdin.close()
    w.wait(timeout=30)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"lat_ns": lat, "wall_s": wall, "count": count,
                      "host_cpu_s": time.process_time() - cpu0,
                      "worker_cpu_s": ru.ru_utime + ru.ru_stime,
                      "worker_rc": w.returncode}))
    return 0 if w.returncode == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--size", type=int, default=196608)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--inflight", type=int, default=1)
    a = ap.parse_args()
    if a.worker:
        return worker()
    return host(a.size, a.count, a.warmup, a.inflight)


if __name__ == "__main__":
    sys.exit(main())
