"""glibc's allocator, set for a long-lived process that allocates the same large
buffers over and over (a model's activations, one batch after another).

By default glibc serves every allocation above a (dynamic, initially 128 KiB) threshold
with its own ``mmap`` and gives it back with ``munmap`` when freed, and trims the heap's
free top. A PyTorch forward pass on a batch allocates and frees its activations each
time, so each pass faults every page of them in again. A first-touch fault costs
0.25 µs on bare metal and ~11 µs on some VMs; there, batch 8 of the torch example at
64 px ran 2,100 tiles/s in a worker and 8,200 tiles/s with the settings below
(docs/benchmarks.md, "Batched PyTorch workers").

``keep_freed_memory()`` makes freed memory stay in the process for reuse: allocations
up to 256 MiB come from the heap, up to 512 MiB of free heap top is kept, and every
thread allocates from the main heap (a thread's own arena would still map whatever
exceeds its 64-MiB heaps: a tile thread running batch 32 at 256 px did). The price is
that resident memory does not shrink after a peak, and threads share one allocator
lock (the worker's threads are a tile loop and a protocol reader): bound memory with
``python3 -m tessera.worker --max-rss-mb`` (the worker re-executes itself) where that
matters. ``python3 -m tessera.worker`` calls it unless started with ``--malloc default``.
"""

import ctypes

# mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20
ARENAS = 1  # threads share the main heap: a thread's own arena maps what exceeds its 64-MiB heaps


def keep_freed_memory() -> bool:
    """Applies the settings above; False where the C library has no ``mallopt`` (not
    glibc) or refuses them. Process-wide; call it early, once."""
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            and mallopt(_M_ARENA_MAX, ARENAS) == 1)
