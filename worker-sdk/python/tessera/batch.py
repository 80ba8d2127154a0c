"""Batched handlers: tiles of one dtype and shape handed to the handler together.

A batch handler is called as ``handler(batch, tiles)``: ``batch`` is one array of
shape ``(B, *tile.shape)`` (the tiles' inputs, copied once into a buffer this module
reuses; valid during the call only) and ``tiles`` the list of B :class:`tessera.Tile`
(per-tile metadata: ``x``, ``y``, ``level``, ``op`` ...). It returns one array-like of
length B (slice ``i`` is published as tile ``i``'s result, one copy per tile into its
output block; the copies and the publication run natively, ``Worker.publish_batch``) or None after answering the tiles itself. It may also answer single
tiles (``tiles[i].fail(...)``) and return the array: only tiles still pending are
published. An exception fails every tile of the batch still pending, with the
traceback.

Every take is split by (dtype, shape) into uniform groups; a group runs when it holds
``max_batch`` tiles or when its oldest tile has waited ``max_wait`` seconds (so a
viewer asking for a few tiles still gets them within ``max_wait``).

A handler that moves tiles somewhere itself (a GPU, see :mod:`tessera.torch`) skips
the host copy: mark it with ``@batch_handler(assemble=False)`` and it receives
``batch=None``.
"""

from __future__ import annotations

import time
import traceback
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

BatchHandler = Callable[[Optional[np.ndarray], List[Any]], Any]

#: Reusable assembly buffers kept per (dtype, shape) (least recently used goes first).
_MAX_BUFFERS = 4


def batch_handler(fn: Optional[BatchHandler] = None, *, assemble: bool = True):
    """Marks ``fn`` as a batch handler (``python3 -m tessera.worker --batch N`` reads
    ``assemble``: False hands ``batch=None`` to a handler that reads the tiles itself)."""

    def mark(f: BatchHandler) -> BatchHandler:
        f.tessera_assemble = assemble  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def _key(tile) -> Tuple[np.dtype, Tuple[int, ...]]:
    # One dtype object per kind (native, shared) and a tuple: hashing both is cheap.
    return tile.dtype, tile.shape


class Batcher:
    """Groups tiles taken from a native worker and runs a batch handler on them.

    One thread drives it (:meth:`step` or :meth:`run`).
    """

    def __init__(self, native, max_batch: int = 32, max_wait: float = 0.002, timeout: float = 0.1,
                 assemble: bool = True) -> None:
        self._w = native
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait))
        self.timeout = float(timeout)
        self.assemble = assemble
        self._groups: Dict[Tuple[np.dtype, Tuple[int, ...]], Tuple[float, List[Any]]] = {}
        self._buffers: "OrderedDict[Tuple[np.dtype, Tuple[int, ...]], np.ndarray]" = OrderedDict()
        self.batches = 0          # handler calls so far
        self.tiles_run = 0        # tiles handed to the handler so far
        self.largest = 0          # largest batch so far

    @property
    def held(self) -> int:
        """Tiles taken and not yet handed to the handler."""
        return sum(len(t) for _, t in self._groups.values())

    def _buffer(self, key, shape, dtype) -> np.ndarray:
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < self.max_batch:
            buf = np.empty((self.max_batch, *shape), dtype=dtype)
            self._buffers[key] = buf
            while len(self._buffers) > _MAX_BUFFERS:
                self._buffers.popitem(last=False)
        self._buffers.move_to_end(key)
        return buf

    def run_batch(self, handler: BatchHandler, tiles: List[Any]) -> None:
        """Runs ``handler`` on one uniform batch and answers every tile exactly once."""
        n = len(tiles)
        self.batches += 1
        self.tiles_run += n
        self.largest = max(self.largest, n)
        self._w.hold_wakeups()  # every answer of this batch reaches the client with one wake-up
        try:
            self._run_batch(handler, tiles, n)
        finally:
            self._w.release_wakeups()

    def _run_batch(self, handler: BatchHandler, tiles: List[Any], n: int) -> None:
        try:
            batch = None
            if self.assemble:
                first = tiles[0]
                batch = self._buffer(_key(first), first.shape, first.dtype)[:n]
                self._w.gather(tiles, batch)  # the one copy (native, per tile): arena blocks are not contiguous
            out = handler(batch, tiles)
            if out is None:
                for t in tiles:
                    if t.pending:
                        t.fail("batch handler returned None without answering the tile")
                return
            if not isinstance(out, np.ndarray):
                out = np.asarray(out)
            if out.ndim == 0 or out.shape[0] != n:
                raise ValueError(f"batch handler returned shape {out.shape} for a batch of {n} tiles")
            self._w.publish_batch(tiles, out)  # native: one output block and one copy per pending tile
        except Exception:  # noqa: BLE001 - a handler error fails the tiles of this batch only
            text = traceback.format_exc()
            for t in tiles:
                if t.pending:
                    t.fail(text)

    def _add(self, tiles: List[Any], now: float) -> None:
        for t in tiles:
            if not t.pending:
                continue
            key = _key(t)
            g = self._groups.get(key)
            if g is None:
                self._groups[key] = (now, [t])
            else:
                g[1].append(t)

    def flush(self, handler: BatchHandler) -> None:
        """Runs every tile still held, in batches of at most ``max_batch``."""
        groups, self._groups = self._groups, {}
        for _, tiles in groups.values():
            for i in range(0, len(tiles), self.max_batch):
                self.run_batch(handler, tiles[i:i + self.max_batch])

    def step(self, handler: BatchHandler) -> bool:
        """One take plus every batch that is full or due; False once the worker stopped
        (tiles still held are run first)."""
        now = time.monotonic()
        timeout = self.timeout
        for first, _ in self._groups.values():
            timeout = min(timeout, max(0.0, first + self.max_wait - now))
        taken = self._w.take(self.max_batch, timeout)
        if taken is None:
            self.flush(handler)
            return False
        now = time.monotonic()
        self._add(taken, now)
        for key in list(self._groups):
            first, tiles = self._groups[key]
            while len(tiles) >= self.max_batch:
                batch, tiles = tiles[:self.max_batch], tiles[self.max_batch:]
                self.run_batch(handler, batch)
                first = time.monotonic()
            if tiles and now >= first + self.max_wait:
                self.run_batch(handler, tiles)
                tiles = []
            if tiles:
                self._groups[key] = (first, tiles)
            else:
                del self._groups[key]
        return True

    def run(self, handler: BatchHandler, on_batch: Optional[Callable[[int], None]] = None) -> int:
        """Steps until the worker stops; returns the number of tiles handed to the handler."""
        while True:
            before = self.batches
            more = self.step(handler)
            if on_batch is not None and self.batches != before:
                on_batch(self.tiles_run)
            if not more:
                return self.tiles_run
