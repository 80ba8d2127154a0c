"""The worker-side tile loop over the native bindings (see tessera.Worker)."""

from __future__ import annotations

import signal
import threading
import traceback
from typing import Callable, Iterator, List, Optional

import numpy as np

from . import _worker as _tessera  # the worker SDK's native module

Handler = Callable[[np.ndarray, "_tessera.Tile"], Optional[np.ndarray]]

#: Namespace shared by Appose scripts run in a worker (the init script, EXECUTE
#: scripts) and handler modules: ``from tessera.worker import context``.
context: dict = {}


def handle_tile(handler: Handler, tile: "_tessera.Tile") -> bool:
    """Runs ``handler(tile.input, tile)`` and answers the tile exactly once.

    The handler returns an array (published; copied unless it came from
    ``tile.output``) or None after answering the tile itself. An exception fails
    this tile with the Python traceback text. Returns True if the tile completed.
    KeyboardInterrupt and SystemExit propagate (the caller stops the loop).
    """
    try:
        out = handler(tile.input, tile)
        if tile.pending:
            if out is None:
                tile.fail("handler returned None without answering the tile")
                return False
            tile.publish(out)
        return True
    except Exception:  # noqa: BLE001 - any handler error fails only this tile
        if tile.pending:
            tile.fail(traceback.format_exc())
        return False


class Worker:
    """A Tessera worker: takes tiles from the arena without copying.

    Create it with :meth:`from_env` inside a process started by a Tessera broker
    (or by ``python3 -m tessera.worker``, which also runs the Appose protocol).
    Use it as a context manager so that tiles still held when the loop stops
    (exception, KeyboardInterrupt) are answered and their blocks returned.
    """

    def __init__(self, native: "_tessera.Worker", runtime: bool = False) -> None:
        self._w = native
        self._runtime = runtime

    @classmethod
    def from_env(cls, spin_us: int = 50) -> "Worker":
        """Attaches the arena named by TESSERA_ARENA_FD and TESSERA_SLOT.

        No protocol thread is started: stdin/stdout stay with the host process
        (e.g. an Appose worker running this code as a task).
        """
        return cls(_tessera.Worker.from_env(spin_us))

    # ---- the loop ----
    def take(self, max_batch: int = 16, timeout: float = 0.1) -> Optional[List["_tessera.Tile"]]:
        """Up to ``max_batch`` tiles within ``timeout`` s ([] on timeout, None once stopped).

        The GIL is released while waiting.
        """
        return self._w.take(max_batch, timeout)

    def tiles(self, max_batch: int = 16, timeout: float = 0.1, yield_empty: bool = False) -> Iterator[List["_tessera.Tile"]]:
        """Yields batches (lists of :class:`tessera.Tile`) until the worker stops.

        ``timeout`` bounds each wait (empty batches are yielded only with
        ``yield_empty``). Tiles of a batch left unanswered when the next batch is
        requested are failed. KeyboardInterrupt while waiting and SIGTERM (main
        thread, outside the runtime) end the iteration cleanly.
        """
        restore = self._install_sigterm()
        batch: List[_tessera.Tile] = []
        try:
            while True:
                try:
                    batch = self._w.take(max_batch, timeout)
                except KeyboardInterrupt:
                    return
                if batch is None:
                    return
                if batch or yield_empty:
                    yield batch
                for t in batch:
                    if t.pending:
                        t.fail("handler returned without answering the tile")
                batch = []
        finally:
            for t in batch or ():
                if t.pending:
                    t.fail("worker stopped before answering this tile")
            restore()

    def run(self, handler: Handler, max_batch: int = 16, timeout: float = 0.1,
            on_batch: Optional[Callable[[int], None]] = None) -> dict:
        """Runs ``handler(input_array, tile)`` on every tile until the worker stops.

        Per-tile errors are isolated (see :func:`handle_tile`); KeyboardInterrupt
        stops the loop cleanly. ``on_batch(n_done)`` is called after each batch.
        Returns the worker's counters.
        """
        done = 0
        try:
            for batch in self.tiles(max_batch=max_batch, timeout=timeout):
                for tile in batch:
                    handle_tile(handler, tile)
                done += len(batch)
                if on_batch is not None:
                    on_batch(done)
        except KeyboardInterrupt:
            pass
        finally:
            self._w.close()
        return self.stats

    def run_batched(self, handler, max_batch: int = 32, max_wait: float = 0.002, timeout: float = 0.1,
                    assemble: Optional[bool] = None, on_batch: Optional[Callable[[int], None]] = None) -> dict:
        """Runs the batch handler ``handler(batch, tiles)`` until the worker stops.

        Tiles of one dtype and shape are grouped into batches of up to ``max_batch``;
        a partial batch runs once its oldest tile waited ``max_wait`` seconds. See
        :mod:`tessera.batch` for the handler contract. ``assemble`` (default: the
        handler's ``@batch_handler`` mark, else True) copies the inputs into one array.
        Returns the worker's counters.
        """
        from .batch import Batcher

        if assemble is None:
            assemble = getattr(handler, "tessera_assemble", True)
        batcher = Batcher(self._w, max_batch=max_batch, max_wait=max_wait, timeout=timeout, assemble=assemble)
        restore = self._install_sigterm()
        try:
            batcher.run(handler, on_batch=on_batch)
        except KeyboardInterrupt:
            pass
        finally:
            restore()
            self._w.close()
        return self.stats

    def request_stop(self) -> None:
        """Makes the loop end after the current batch (thread-safe)."""
        self._w.request_stop()

    def close(self) -> None:
        """Answers every tile still held (failed) and frees unpublished outputs."""
        self._w.close()

    @property
    def slot(self) -> int:
        return self._w.slot

    @property
    def stats(self) -> dict:
        """Counters: taken, published, failed, canceled, rejected."""
        return self._w.stats

    @property
    def pending_tiles(self) -> int:
        """Tiles handed out and not yet answered."""
        return self._w.pending_tiles

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> bool:
        self._w.close()
        return exc[0] is KeyboardInterrupt  # a Ctrl-C stops the worker cleanly

    # SIGTERM asks the loop to stop after the current batch. Under the C++ runtime
    # the runtime's own handler does this already.
    def _install_sigterm(self) -> Callable[[], None]:
        if self._runtime or threading.current_thread() is not threading.main_thread():
            return lambda: None
        try:
            previous = signal.signal(signal.SIGTERM, lambda *_: self._w.request_stop())
        except (ValueError, OSError):
            return lambda: None
        return lambda: signal.signal(signal.SIGTERM, previous)
