"""PyTorch helpers for batch handlers: the arena pinned once, batches moved to a device
with one copy per tile, results copied back into output blocks.

    import torch
    from tessera import batch_handler
    from tessera import torch as tt

    @batch_handler(assemble=False)          # no host staging copy: to_device reads the arena
    def handler(_, tiles):
        x = tt.to_device(tiles, "cuda", dtype=torch.float32)    # (B, C, H, W) on the GPU
        tt.publish(tiles, model(x.div_(255)).argmax(1).to(torch.uint8))

On a machine with CUDA, the first :func:`to_device` to a CUDA device registers the
worker's whole arena mapping with ``cudaHostRegister`` (:func:`pin_arena`; once per
mapping, unregistered before the mapping goes), so every per-tile host->device copy is
an asynchronous DMA from the tile's own arena block. Without CUDA everything runs on
the CPU with the same API (one copy per tile into the batch tensor).

Import this module only where torch is installed (``import tessera`` does not).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

log = logging.getLogger("tessera.torch")

# torch.from_numpy warns on read-only arrays (tile inputs are); nothing here writes to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

#: Arena mappings registered with CUDA in this process: address -> bytes.
_pinned: Dict[int, int] = {}
#: Mappings for which registration was tried and is not possible (no CUDA, refused).
_unpinnable: Dict[int, str] = {}
#: Reused staging tensors of to_device (device, dtype, shape) -> tensor; only ever read
#: by a conversion that completes (CPU) or is stream-ordered (CUDA) before the next use.
_staging: Dict[tuple, torch.Tensor] = {}
_MAX_STAGING = 4


def cuda_usable() -> bool:
    """True where torch was built with CUDA and a device is visible."""
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a CPU build or a broken driver: no CUDA
        return False


def _native(worker: Any) -> Any:
    """The native worker behind a tessera.Worker, a tile, or the native object itself."""
    if hasattr(worker, "_w"):
        return worker._w
    if hasattr(worker, "_worker"):
        return worker._worker
    return worker


def _code(err: Any) -> int:
    if isinstance(err, tuple):
        err = err[0]
    try:
        return int(err)
    except (TypeError, ValueError):
        return int(getattr(err, "value", 0))


def pinned_arenas() -> Dict[int, int]:
    """The arena mappings currently registered with CUDA (address -> bytes)."""
    return dict(_pinned)


def pin_arena(worker: Any) -> bool:
    """Registers ``worker``'s arena mapping with CUDA (``cudaHostRegister``), once.

    Returns True if the mapping is pinned (now or before). Without CUDA (CPU build, no
    visible device, ``cudart`` unavailable) it does nothing and returns False. The
    registration is undone before the worker's mapping is unmapped. The cost (hundreds
    of ms for a large arena) is logged at INFO.
    """
    nw = _native(worker)
    ptr, size = int(nw.arena_address), int(nw.arena_size)
    if ptr in _pinned:
        return True
    if ptr in _unpinnable:
        return False
    if size == 0 or not cuda_usable():
        _unpinnable[ptr] = "no CUDA device"
        log.debug("tessera.torch: no CUDA device; the arena is not pinned")
        return False
    try:
        cudart = torch.cuda.cudart()
        t0 = time.perf_counter()
        rc = _code(cudart.cudaHostRegister(ptr, size, 0))
    except Exception as e:  # noqa: BLE001 - cudart missing from this build: stay pageable
        _unpinnable[ptr] = str(e)
        log.warning("tessera.torch: cannot pin the arena (%s); host->device copies stay pageable", e)
        return False
    if rc != 0:
        _unpinnable[ptr] = f"cudaHostRegister error {rc}"
        log.warning("tessera.torch: cudaHostRegister(%#x, %d) failed with error %d; copies stay pageable", ptr, size, rc)
        return False
    ms = (time.perf_counter() - t0) * 1e3
    _pinned[ptr] = size
    nw._before_unmap(lambda: _unpin(ptr))
    log.info("tessera.torch: pinned the arena (%.1f MiB) in %.1f ms", size / 2**20, ms)
    return True


def _unpin(ptr: int) -> None:
    if _pinned.pop(ptr, None) is None:
        return
    try:
        torch.cuda.synchronize()  # no copy may still read the range
        rc = _code(torch.cuda.cudart().cudaHostUnregister(ptr))
        if rc != 0:
            log.warning("tessera.torch: cudaHostUnregister(%#x) failed with error %d", ptr, rc)
    except Exception as e:  # noqa: BLE001 - called while the worker goes away: report, never raise
        log.warning("tessera.torch: cannot unregister the arena: %s", e)


#: NumPy dtype -> torch dtype, filled on first use of each (to_device runs once per batch).
_torch_dtypes: Dict[np.dtype, torch.dtype] = {}


def _torch_dtype(np_dtype: np.dtype) -> torch.dtype:
    t = _torch_dtypes.get(np_dtype)
    if t is None:
        t = _torch_dtypes[np_dtype] = torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
    return t


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def to_device(tiles: List[Any], device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = torch.float32,
              layout: str = "NCHW") -> torch.Tensor:
    """The batch of ``tiles`` (one dtype and shape, as a batch handler gets them) as one
    tensor on ``device``.

    Each tile's arena block is copied once, straight into its slice of a (B, H, W, C)
    tensor of the tiles' own dtype on the device (non-blocking from the pinned arena on
    CUDA; the arena is pinned on first use), then converted there to ``dtype`` (None:
    keep the tiles' dtype) and, for ``layout="NCHW"``, permuted to (B, C, H, W): shape
    NCHW, memory in the channels-last order the tiles already have (convolutions on the
    CPU and cuDNN run fastest on it; call ``.contiguous()`` for NCHW memory). A 2-D
    tile is treated as one channel. The input blocks must stay with the worker until the
    copies finished: :func:`publish` synchronizes before answering any tile.
    """
    if not tiles:
        raise ValueError("to_device: no tiles")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"to_device: layout must be 'NCHW' or 'NHWC', got {layout!r}")
    device = torch.device(device)
    first = tiles[0]
    shape = tuple(first.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"to_device: tiles must be (H, W) or (H, W, C), got {shape}")
    cuda = _is_cuda(device)
    if cuda:
        pin_arena(first)
    src_dtype = _torch_dtype(first.dtype)
    convert = dtype is not None and dtype != src_dtype
    key = (str(device), src_dtype, len(tiles), shape)
    raw = _staging.get(key) if convert else None
    if raw is None:
        raw = torch.empty((len(tiles), *shape), dtype=src_dtype, device=device)
        if convert:
            _staging[key] = raw
            while len(_staging) > _MAX_STAGING:
                _staging.pop(next(iter(_staging)))
    if cuda:
        for i, t in enumerate(tiles):  # one DMA per tile from its pinned arena block
            if tuple(t.shape) != shape or t.dtype != first.dtype:
                raise ValueError(f"to_device: tile {i} is {t.dtype} {tuple(t.shape)}, the batch is {first.dtype} {shape}")
            raw[i].copy_(torch.from_numpy(t.input), non_blocking=True)
    else:
        try:  # one memcpy per tile, natively (it checks every tile's dtype and shape first)
            _native(first).gather(tiles, raw.numpy())
        except ValueError as e:
            raise ValueError(f"to_device: {e}") from None
    x = raw if len(shape) == 3 else raw.unsqueeze(-1)
    if layout == "NCHW":
        x = x.permute(0, 3, 1, 2)
    if convert:
        x = x.to(dtype)  # a new tensor: the staging tensor is free for the next batch
    return x


def publish(tiles: List[Any], tensor: torch.Tensor) -> int:
    """Answers every still-pending tile ``i`` with ``tensor[i]`` (any device).

    Each slice is copied once, straight into an output block of that tile (from the
    device: non-blocking into the pinned arena), the device is synchronized, then the
    tiles are answered (no further copy). A tile whose output block cannot be had is
    failed. Returns the number of tiles published.
    """
    if tensor.shape[0] != len(tiles):
        raise ValueError(f"publish: tensor has {tensor.shape[0]} slices for {len(tiles)} tiles")
    cuda = _is_cuda(tensor.device)
    if not cuda and tiles and tensor.dtype != torch.bfloat16:
        # On the CPU the slices are already in host memory: block, copy and publish natively.
        return int(_native(tiles[0]).publish_batch(tiles, tensor.detach().contiguous().numpy()))
    if cuda and tiles:
        pin_arena(tiles[0])
    np_dtype = torch.empty(0, dtype=tensor.dtype).numpy().dtype
    outs = []
    for i, t in enumerate(tiles):
        if not t.pending:
            outs.append(None)
            continue
        try:
            out = t.output(np_dtype, tuple(tensor.shape[1:]) or (1,))
        except Exception as e:  # noqa: BLE001 - no block for this tile: fail it, publish the rest
            t.fail(f"no output block for this tile: {e}")
            outs.append(None)
            continue
        torch.from_numpy(out).copy_(tensor[i].reshape(out.shape), non_blocking=cuda)
        outs.append(out)
    if cuda:
        torch.cuda.synchronize(tensor.device)  # results are in the blocks; inputs are no longer read
    n = 0
    native = _native(tiles[0]) if tiles else None
    if native is not None:
        native.hold_wakeups()  # the client is woken once for the whole batch
    try:
        for t, out in zip(tiles, outs):
            if out is not None and t.pending:
                t.publish(out)
                n += 1
    finally:
        if native is not None:
            native.release_wakeups()
    return n
