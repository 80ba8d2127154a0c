"""Batch handlers for the batch tests (run in real worker processes).

Every handler answers tile i with int64 [x, sum of its input, batch size, batch H, op].
  op 0: publish all (returned array)
  op 1: fail the tiles whose x is a multiple of 3 itself, return the array for the rest
  op 2: raise (fails every tile of the batch)
"""

import os

import numpy as np

from tessera import batch_handler


def report(batch, tiles):
    if any(t.op == 2 for t in tiles):
        raise RuntimeError(f"op 2 raises (batch of {len(tiles)})")
    n = len(tiles)
    if batch.shape[0] != n or batch.dtype != tiles[0].dtype:
        raise AssertionError(f"batch {batch.dtype} {batch.shape} for {n} tiles")
    out = np.zeros((n, 5), dtype=np.int64)
    sums = batch.reshape(n, -1).sum(axis=1, dtype=np.int64)
    for i, t in enumerate(tiles):
        if tuple(batch.shape[1:]) != tuple(t.shape):
            raise AssertionError(f"tile {t.seq} of shape {t.shape} in a batch of {batch.shape}")
        out[i] = (t.x, sums[i], n, batch.shape[1], t.op)
        if t.op == 1 and t.x % 3 == 0:
            t.fail(f"x={t.x} is a multiple of 3")
    return out


@batch_handler(assemble=False)
def no_assembly(batch, tiles):
    if batch is not None:
        raise AssertionError("assemble=False still assembled a batch")
    for t in tiles:
        t.publish(np.array([t.x, int(t.input.sum(dtype=np.int64)), len(tiles), t.shape[0], t.op], dtype=np.int64))


def cuda_visible_devices(batch, tiles):
    """Answers each tile with the worker's CUDA_VISIBLE_DEVICES (uint8 bytes, '-' if unset)."""
    v = os.environ.get("CUDA_VISIBLE_DEVICES", "-").encode()
    return np.tile(np.frombuffer(v, dtype=np.uint8), (len(tiles), 1))
