"""Tessera inside an unmodified Appose Python worker.

An Appose worker owns stdin/stdout and runs each EXECUTE script on its own thread
with a ``task`` object in scope. A host that started that worker with the Tessera
arena inherited (TESSERA_ARENA_FD, TESSERA_SLOT) can run the tile loop as one
long-running task::

    # the task script sent by the host
    import tessera.appose
    def handler(tile_input, tile):
        return (tile_input.mean(axis=2) < 200).astype("uint8") * 255
    tessera.appose.serve(task, handler)

Tiles then flow through shared memory; only progress goes through Appose (as
``task.update`` messages). The loop ends when the host cancels the task, when the
worker's main thread exits (stdin closed), or on ``tessera.Worker.request_stop``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from .sdk import Handler, Worker, handle_tile


def serve(task: Any, handler: Handler, max_batch: int = 16, timeout: float = 0.1,
          update_every: float = 1.0, worker: Optional[Worker] = None) -> dict:
    """Runs the tile loop as the Appose task ``task``; returns the worker's counters.

    Progress is reported with ``task.update(message, current=tiles_done)`` at most
    every ``update_every`` seconds (and once at the start, so the host knows the
    loop is live). The counters are also stored in ``task.outputs``. If the host
    canceled the task, ``task.cancel()`` is reported.
    """
    w = worker if worker is not None else Worker.from_env()
    main = threading.main_thread()
    done = 0
    failed = 0
    last = time.monotonic()
    _update(task, f"tessera: serving tiles on slot {w.slot}", 0)
    try:
        while not getattr(task, "cancel_requested", False) and main.is_alive():
            batch = w.take(max_batch, timeout)
            if batch is None:
                break
            for tile in batch:
                if not handle_tile(handler, tile):
                    failed += 1
            done += len(batch)
            now = time.monotonic()
            if batch and now - last >= update_every:
                last = now
                _update(task, f"tessera: {done} tiles ({failed} failed)", done)
    finally:
        w.close()
    stats = dict(w.stats)
    stats["tiles"] = done
    outputs = getattr(task, "outputs", None)
    if isinstance(outputs, dict):
        outputs.update(stats)
    if getattr(task, "cancel_requested", False) and hasattr(task, "cancel"):
        task.cancel()
    return stats


def _update(task: Any, message: str, current: int) -> None:
    update = getattr(task, "update", None)
    if update is not None:
        update(message, current=current)
