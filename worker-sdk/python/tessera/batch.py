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

from typing import Any, Callable, List, Optional

import numpy as np

BatchHandler = Callable[[Optional[np.ndarray], List[Any]], Any]


def batch_handler(fn: Optional[BatchHandler] = None, *, assemble: bool = True):
    """Marks ``fn`` as a batch handler (``python3 -m tessera.worker --batch N`` reads
    ``assemble``: False hands ``batch=None`` to a handler that reads the tiles itself)."""

    def mark(f: BatchHandler) -> BatchHandler:
        f.tessera_assemble = assemble  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


class Batcher:
    """Groups tiles taken from a native worker and runs a batch handler on them.

    The loop itself is native (``tessera::Batcher``, the same one C++ ``serve_batched``
    runs): tiles are taken and grouped without the GIL, and each due batch is handed to
    the handler with it. One thread drives it (:meth:`step` or :meth:`run`).
    """

    def __init__(self, native, max_batch: int = 32, max_wait: float = 0.002, timeout: float = 0.1,
                 assemble: bool = True) -> None:
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait))
        self.timeout = float(timeout)
        self.assemble = assemble
        self._b = native.batcher(self.max_batch, self.max_wait, self.timeout, assemble)

    @property
    def held(self) -> int:
        """Tiles taken and not yet handed to the handler."""
        return self._b.held

    @property
    def batches(self) -> int:
        """Handler calls so far."""
        return self._b.batches

    @property
    def tiles_run(self) -> int:
        """Tiles handed to the handler so far."""
        return self._b.tiles_run

    @property
    def largest(self) -> int:
        """Largest batch so far."""
        return self._b.largest

    def flush(self, handler: BatchHandler) -> None:
        """Runs every tile still held, in batches of at most ``max_batch``."""
        self._b.flush(handler)

    def step(self, handler: BatchHandler) -> bool:
        """One take plus every batch that is full or due; False once the worker stopped
        (tiles still held are run first). A KeyboardInterrupt or SystemExit raised by the
        handler fails its batch and the others due in this step, then is raised here."""
        return self._b.step(handler)

    def run(self, handler: BatchHandler, on_batch: Optional[Callable[[int], None]] = None) -> int:
        """Steps until the worker stops; returns the number of tiles handed to the handler."""
        while True:
            before = self.batches
            more = self.step(handler)
            if on_batch is not None and self.batches != before:
                on_batch(self.tiles_run)
            if not more:
                return self.tiles_run
