"""Handlers used by the worker-process tests (imported by `python3 -m tessera.worker`)."""

import ctypes
import os
import sys
import time

import numpy as np

from tessera.worker import context

print("probe_handlers: a print at import time must not reach the protocol")
INITIALIZED = 0


def init():
    global INITIALIZED
    print("probe_handlers.init: printing during init")
    sys.stdout.flush()
    INITIALIZED = 7


def init_fails():
    raise RuntimeError("model weights are missing (probe)")


def report_init(tile_input, tile):
    """[INITIALIZED, context['greeting'] or -1, pid]."""
    return np.array([INITIALIZED, context.get("greeting", -1), os.getpid()], dtype=np.int64)


def sleepy(tile_input, tile):
    """Holds the tile for `op` milliseconds (checking cancellation), then answers 1 byte."""
    end = time.monotonic() + tile.op / 1000.0
    while time.monotonic() < end:
        if tile.cancel_requested:
            tile.cancel()
            return None
        time.sleep(0.001)
    return np.array([tile.seq % 251], dtype=np.uint8)


def forgets(tile_input, tile):
    """Returns None without answering."""
    return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_probe(tile_input, tile):
    """[bytes glibc holds in mmap'ed chunks while a 4 MiB array is alive, its size]: with
    tessera.allocator's settings the array comes from the heap, by default from mmap."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    size = 4 << 20
    block = np.ones(size, dtype=np.uint8)
    held = mallinfo2().hblkhd
    del block
    return np.array([held, size], dtype=np.int64)
