"""Runs the same host loop from C, Java and Python (ctypes) over libtessera_client.so,
interleaved for ROUNDS rounds (the machine is shared: interleaving spreads load drift
over all three), and prints the median and min..max of tiles/s and of the host's call
cost per tile (alloc + submit + release), with ratios to C.

    /usr/bin/python3 bench/java/run_hosts.py BUILD_DIR [--tiles N] [--workers N] [--rounds N]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--tiles", type=int, default=200000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    here = os.path.dirname(os.path.abspath(__file__))
    worker = f"{b}/bin/tessera-tissue-worker"
    so = f"{b}/lib/libtessera_client.so"
    cp = f"{b}/lib/bench-host-loop.jar:{b}/lib/tessera.jar:/usr/share/java/jna.jar"
    hosts = {
        "c": [f"{b}/bin/tessera-bench-c-host-loop", worker, str(a.tiles), str(a.workers)],
        "java": ["java", "-cp", cp, "HostLoop", worker, str(a.tiles), str(a.workers)],
        "java-jna": ["java", "-Dtessera.jni=false", "-cp", cp, "HostLoop", worker, str(a.tiles), str(a.workers)],
        "java-batched": ["java", "-cp", cp, "HostLoop", worker, str(a.tiles), str(a.workers), "batched"],
        "python-ctypes": [sys.executable, f"{here}/py_host_loop.py", so, worker, str(a.tiles), str(a.workers)],
    }
    rows = {h: [] for h in hosts}
    for r in range(a.rounds):
        for h, cmd in hosts.items():
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                print(f"{h} failed: {out.stderr[-2000:]}", file=sys.stderr)
                return 1
            line = json.loads(out.stdout.strip().splitlines()[-1])
            line["host"] = h
            line["round"] = r
            rows[h].append(line)
            print(json.dumps(line), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(line) + "\n")

    def med(h, k):
        return statistics.median(x[k] for x in rows[h])

    def span(h, k):
        v = [x[k] for x in rows[h]]
        return f"{min(v):.0f}..{max(v):.0f}"

    print(f"\n{a.tiles} tiles x {a.rounds} rounds, {a.workers} workers, 768 B tiles, 64 in flight")
    print(f"{'host':15} {'tiles/s (median, min..max)':32} {'vs C':>6}   {'call ns/tile (median, min..max)':34} {'vs C':>6}   {'alloc+free ns (median, min..max)':30} {'vs C':>6}")
    for h in hosts:
        print(f"{h:15} {med(h, 'tiles_per_s'):>10.0f} ({span(h, 'tiles_per_s'):>17})    "
              f"{med(h, 'tiles_per_s') / med('c', 'tiles_per_s'):>6.2f}   "
              f"{med(h, 'call_ns_per_tile'):>10.0f} ({span(h, 'call_ns_per_tile'):>17})      "
              f"{med(h, 'call_ns_per_tile') / med('c', 'call_ns_per_tile'):>6.2f}   "
              f"{med(h, 'alloc_free_ns'):>8.0f} ({span(h, 'alloc_free_ns'):>13}) {med(h, 'alloc_free_ns') / med('c', 'alloc_free_ns'):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
