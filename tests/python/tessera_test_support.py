"""Helpers shared by the Python tests: clients, worker processes, bounded waits.

Environment (set by ctest): PYTHONPATH (the build's python dir), TESSERA_BIN_DIR,
TESSERA_EXAMPLES_DIR.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import tessera

BIN_DIR = os.environ.get("TESSERA_BIN_DIR", "")
EXAMPLES_DIR = os.environ.get("TESSERA_EXAMPLES_DIR",
                              os.path.join(os.path.dirname(__file__), "..", "..", "worker-sdk", "examples"))
HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable


def worker_env(**extra):
    """What a test's workers need beyond the scrubbed environment every pool gives them:
    the sanitizer runtime when the build is sanitized (set by ctest), plus ``extra``."""
    env = {k: os.environ[k] for k in ("PYTHONPATH", "LD_PRELOAD", "ASAN_OPTIONS", "TSAN_OPTIONS", "UBSAN_OPTIONS")
           if k in os.environ}
    env.update(extra)
    return env


def small_client(**kw):
    opts = dict(classes=[(4096, 512), (65536, 128), (262144, 32)], n_rings=16, ring_capacity=64,
                worker_window=16, spin_us=20)
    opts.update(kw)
    return tessera.Client.embedded(**opts)


def python_worker(handler, *extra):
    """argv of a `python3 -m tessera.worker` process with the examples and tests importable."""
    return [PYTHON, "-m", "tessera.worker", handler, "--path", EXAMPLES_DIR, "--path", HERE, *extra]


def stderr_file(test):
    """A per-test temporary file for a worker's stderr (removed at cleanup)."""
    f = tempfile.NamedTemporaryFile(prefix=f"tessera-py-{os.getpid()}-", suffix=".stderr", delete=False)
    test.addCleanup(lambda: os.path.exists(f.name) and os.unlink(f.name))
    return f


def close_client(test, client):
    test.addCleanup(client.close)
    return client


def fill_tissue(arr, salt=0):
    """Left half dark (tissue), right half bright (glass), varied by `salt`."""
    h, w, _ = arr.shape
    arr[:, : w // 2] = salt % 50
    arr[:, w // 2:] = 250


def submit_rgb(client, stream, rgb, **meta):
    block = client.alloc(rgb.nbytes)
    block.array(rgb.dtype, rgb.shape)[...] = rgb
    return client.submit(stream, block, **meta)


def collect(client, n, timeout=30.0):
    """Polls until `n` outcomes arrived or `timeout` passed."""
    got = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got += client.poll(n - len(got), 0.2)
    return got


def wait_until(pred, timeout=10.0, step=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def spawn_script(client, argv, stderr=None):
    """Starts a worker process (not through the pool) attached to `client`; returns (index, Popen)."""
    index, slot, fd = client.add_external_worker("py")
    env = dict(os.environ, TESSERA_ARENA_FD=str(fd), TESSERA_SLOT=str(slot))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, pass_fds=(fd,))
    client.set_worker_pid(index, proc.pid)
    return index, slot, proc


def reap(proc, timeout=10.0):
    """Waits for a process (SIGKILL after `timeout`), closes its pipes; returns its return code."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
    return rc


def random_rgb(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
