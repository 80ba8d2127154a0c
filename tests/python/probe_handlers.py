"""Handlers used by the worker-process tests (imported by `python3 -m tessera.worker`)."""

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
