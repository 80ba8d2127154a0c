"""Tessera: a lock-free shared-memory tile broker.

Worker side (inside a process the broker started)::

    import tessera
    with tessera.Worker.from_env() as worker:
        for batch in worker.tiles(max_batch=16, timeout=0.1):
            for tile in batch:
                out = tile.output("uint8", tile.shape[:2])   # writable view of an arena block
                out[...] = tile.input.mean(axis=2) < 200       # tile.input: zero-copy, read-only
                tile.publish(out)

or let the SDK run the loop: ``python3 -m tessera.worker my_module:handler``.

Host side::

    client = tessera.Client.embedded()
    client.start_pool([sys.executable, "-m", "tessera.worker", "my_module:handler"], count=2)
    s = client.open_stream(ordered=True)
    block = client.alloc(256 * 256 * 3)
    block.array("uint8", (256, 256, 3))[...] = pixels
    client.submit(s, block)
    for r in client.poll(timeout=1.0):
        print(r.seq, r.outcome, r.output)
"""

from ._worker import TesseraError, Tile
from .batch import Batcher, batch_handler
from .sdk import Worker, handle_tile

__all__ = ["Batcher", "batch_handler", "Client", "InputBlock", "TesseraError", "Tile", "TileResult", "Worker", "handle_tile"]
__version__ = "0.1.0"

_HOST_NAMES = {"Client": "client", "InputBlock": "_host", "TileResult": "_host"}


def __getattr__(name: str):
    """The host side (tessera._host: client, broker, supervisor) loads on first use,
    so a worker process never loads it."""
    if name in _HOST_NAMES:
        import importlib
        return getattr(importlib.import_module("." + _HOST_NAMES[name], __name__), name)
    raise AttributeError(f"module 'tessera' has no attribute {name!r}")
