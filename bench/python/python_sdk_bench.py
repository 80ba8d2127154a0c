"""Per-tile overhead of the Python worker SDK: ``build/release/bin/tessera_bench_python_sdk.py``.

Scenarios (256x256x3 uint8 tiles, 196 KiB, one worker process, one client):
  py_trivial     a Python handler that does not touch the data, batch 1 and 16
  cpp_trivial    the C++ example worker's trivial op (baseline: everything but Python)
  py_mean        a Python handler computing the per-tile mean with NumPy
  inproc_mean    the same NumPy mean run in this process on the same tiles (no broker)

``sdk_us_per_tile`` = Python per-tile time - C++ per-tile time for the same loop.
One JSON line per result. ``--smoke`` runs a few hundred tiles only (CI).
Set TESSERA_BIN_DIR to find the C++ example worker (default: this script's directory);
PYTHONPATH must reach the tessera package (build/release/python).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

# The worker process imports the handlers below from this file by module name.
_HERE = os.path.dirname(os.path.abspath(__file__))
_MODULE = os.path.splitext(os.path.basename(__file__))[0]

H, W, C = 256, 256, 3


# ---- handlers run inside the worker process ----
def trivial(tile_input, tile):
    out = tile.output(np.uint8, (1,))
    out[0] = 1
    return out


def mean(tile_input, tile):
    out = tile.output(np.float32, (1,))
    out[0] = tile_input.mean()
    return out


# ---- host side ----
def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _emit(record: dict) -> None:
    record.update(python=platform.python_version(), numpy=np.__version__, git=_GIT)
    print(json.dumps(record), flush=True)


def run_pipeline(argv, n_tiles: int, op: int = 0, warmup: int = 200, window: int = 64) -> float:
    """Tiles/s through one worker process started with `argv`."""
    import tessera

    client = tessera.Client.embedded(classes=[(4096, 1024), (H * W * C, 2 * window + 16)], n_rings=8,
                                     ring_capacity=256, worker_window=window, prefault=True, spin_us=50)
    try:
        client.start_unsupervised_pool(argv, count=1, stderr=subprocess.DEVNULL)
        s = client.open_stream(max_in_flight=window)
        # Fill a few blocks once so every tile carries real pixels; later tiles reuse the block memory.
        rng = np.random.default_rng(0)
        seed = rng.integers(0, 256, size=(H, W, C), dtype=np.uint8)
        total = n_tiles + warmup
        done = 0
        submitted = 0
        t0 = 0.0
        while done < total:
            while submitted < total and submitted - done < window:
                block = client.alloc(H * W * C)
                if submitted < 2 * window:
                    block.array(np.uint8, (H, W, C))[...] = seed
                client.submit(s, block, dtype=np.uint8, shape=(H, W, C), op=op)
                submitted += 1
            results = client.poll(window, 1.0)
            for r in results:
                if r.outcome != "completed":
                    raise RuntimeError(f"tile {r.seq}: {r.outcome}: {r.error}")
            done += len(results)
            if t0 == 0.0 and done >= warmup:
                t0 = time.perf_counter()
                base = done
        return (done - base) / (time.perf_counter() - t0)
    finally:
        client.close()


def inproc_mean(n_tiles: int) -> float:
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, size=(H, W, C), dtype=np.uint8) for _ in range(8)]
    out = np.zeros(1, np.float32)
    for t in tiles:
        out[0] = t.mean()
    t0 = time.perf_counter()
    for i in range(n_tiles):
        out[0] = tiles[i % len(tiles)].mean()
    return n_tiles / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=os.path.basename(__file__), description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=20000)
    p.add_argument("--smoke", action="store_true", help="a few hundred tiles (CI)")
    args = p.parse_args(argv)
    n = 300 if args.smoke else args.tiles
    warm = 50 if args.smoke else 500
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_HERE, os.environ.get("PYTHONPATH")]))
    py = [sys.executable, "-m", "tessera.worker", _MODULE + ":{}", "--max-batch", "{}"]

    cpp_worker = os.path.join(os.environ.get("TESSERA_BIN_DIR", _HERE), "tessera-tissue-worker")
    cpp_us = None
    if os.access(cpp_worker, os.X_OK):
        tps = run_pipeline([cpp_worker], n, op=2, warmup=warm)
        cpp_us = 1e6 / tps
        _emit({"bench": "cpp_trivial", "tiles": n, "tiles_per_s": round(tps), "us_per_tile": round(cpp_us, 2)})
    for batch in (1, 16):
        argv = [a.format("trivial", batch) if "{}" in a else a for a in py]
        argv[3], argv[5] = _MODULE + ":trivial", str(batch)
        tps = run_pipeline(argv, n, warmup=warm)
        rec = {"bench": "py_trivial", "batch": batch, "tiles": n, "tiles_per_s": round(tps), "us_per_tile": round(1e6 / tps, 2)}
        if cpp_us is not None:
            rec["sdk_us_per_tile"] = round(1e6 / tps - cpp_us, 2)
        _emit(rec)
    argv = list(py)
    argv[3], argv[5] = _MODULE + ":mean", "16"
    tps_mean = run_pipeline(argv, n, warmup=warm)
    tps_in = inproc_mean(n)
    _emit({"bench": "py_mean", "batch": 16, "tiles": n, "tiles_per_s": round(tps_mean), "us_per_tile": round(1e6 / tps_mean, 2)})
    _emit({"bench": "inproc_mean", "tiles": n, "tiles_per_s": round(tps_in), "us_per_tile": round(1e6 / tps_in, 2),
           "ratio_py_mean_vs_inproc": round(tps_in / tps_mean, 3)})
    return 0


_GIT = _git_sha()

if __name__ == "__main__":
    sys.exit(main())
