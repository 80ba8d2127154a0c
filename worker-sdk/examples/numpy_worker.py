"""Example Python worker (NumPy): the same ops as the C++ tissue worker.

  op 0 (mask):    uint8 RGB (H, W, 3) -> uint8 mask (H, W): 255 where the pixel is
                  darker than THRESHOLD (tissue), 0 elsewhere (glass).
  op 1 (mean):    any uint8 tile -> float32 (1,) mean of every byte.
  op 2 (trivial): touches nothing, answers a 1-byte tile (overhead benchmarks).
  op 3 (fail):    always raises (error-path tests).
  op 4 (slow):    sleeps up to 50 ms while honouring cancellation, then answers like op 2.
  op 5 (print):   prints to stdout (must land on stderr), then answers like op 2.
  op 6 (slow mask): sleeps up to 50 ms while honouring cancellation, then answers like op 0.

Run by the broker:
  python3 -m tessera.worker numpy_worker:handler --path worker-sdk/examples
Environment: TESSERA_THRESHOLD (default 200).
"""

import os
import time

import numpy as np

THRESHOLD = int(os.environ.get("TESSERA_THRESHOLD", "200"))


def mask(tile_input: np.ndarray, tile) -> np.ndarray:
    """Tissue mask written straight into an arena output block (no copy)."""
    if tile_input.dtype != np.uint8 or tile_input.ndim != 3 or tile_input.shape[2] != 3:
        raise ValueError(f"mask needs uint8 (H, W, 3), got {tile_input.dtype} {tile_input.shape}")
    out = tile.output(np.uint8, tile_input.shape[:2])
    darkness = tile_input.sum(axis=2, dtype=np.uint16) < 3 * THRESHOLD
    np.multiply(darkness, 255, out=out, casting="unsafe")
    return out


def mean(tile_input: np.ndarray, tile) -> np.ndarray:
    out = tile.output(np.float32, (1,))
    out[0] = tile_input.mean() if tile_input.size else 0.0
    return out


def trivial(tile_input: np.ndarray, tile) -> np.ndarray:
    out = tile.output(np.uint8, (1,))
    out[0] = 1
    return out


def slow(tile_input: np.ndarray, tile):
    for _ in range(50):
        if tile.cancel_requested:
            tile.cancel()
            return None
        time.sleep(0.001)
    return trivial(tile_input, tile)


def slow_mask(tile_input: np.ndarray, tile):
    for _ in range(50):
        if tile.cancel_requested:
            tile.cancel()
            return None
        time.sleep(0.001)
    return mask(tile_input, tile)


def noisy(tile_input: np.ndarray, tile) -> np.ndarray:
    print("a stray print from the handler", tile.seq, "{\"task\": \"not-a-protocol-line\"}")
    return trivial(tile_input, tile)


def fail(tile_input: np.ndarray, tile):
    raise RuntimeError(f"op 3 always fails (tile {tile.seq})")


OPS = {0: mask, 1: mean, 2: trivial, 3: fail, 4: slow, 5: noisy, 6: slow_mask}


def handler(tile_input: np.ndarray, tile):
    op = OPS.get(tile.op)
    if op is None:
        raise ValueError(f"unknown op {tile.op}")
    return op(tile_input, tile)


def reference_mask(rgb: np.ndarray, threshold: int = THRESHOLD) -> np.ndarray:
    """The mask computed without the broker (tests compare against it)."""
    return np.where(rgb.astype(np.uint16).sum(axis=2) < 3 * threshold, 255, 0).astype(np.uint8)
