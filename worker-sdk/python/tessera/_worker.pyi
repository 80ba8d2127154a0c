"""Typing stubs of the worker SDK's native module (for IDE completion). Import `tessera`, not this."""

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

DTypeLike = npt.DTypeLike
ShapeLike = Union[int, Sequence[int]]

class TesseraError(RuntimeError):
    code: str  # tessera Errc name: "invalid_argument", "closed", "no_space", "timeout", ...

class Tile:
    seq: int
    stream: int
    op: int
    epoch: int
    x: int
    y: int
    level: int
    pending: bool
    cancel_requested: bool
    dtype: np.dtype
    shape: Tuple[int, ...]
    input_address: int
    descriptor: bytes
    _worker: "Worker"
    @property
    def input(self) -> np.ndarray: ...
    def output(self, dtype: DTypeLike, shape: ShapeLike) -> np.ndarray: ...
    def publish(self, result: npt.ArrayLike) -> None: ...
    def fail(self, message: str) -> None: ...
    def cancel(self) -> None: ...

class Worker:
    slot: int
    stopping: bool
    pending_tiles: int
    stats: dict
    arena_address: int
    arena_size: int
    def _before_unmap(self, fn: object) -> None: ...
    @staticmethod
    def from_env(spin_us: int = 50) -> "Worker": ...
    @staticmethod
    def _with_runtime(on_script: Optional[object] = None, spin_us: int = 50) -> "Worker": ...
    def take(self, max_batch: int = 16, timeout: float = 0.1) -> Optional[List[Tile]]: ...
    def gather(self, tiles: Sequence[Tile], dest: np.ndarray) -> int: ...
    def publish_batch(self, tiles: Sequence[Tile], result: Any) -> int: ...
    def request_stop(self) -> None: ...
    def close(self) -> None: ...
    def finish(self) -> int: ...
