"""Tessera and Appose: the Appose worker protocol in Python.

Two ways to meet an Appose host:

1. ``python3 -m tessera.worker`` *is* an Appose worker (a drop-in for
   ``appose.python_worker``): :class:`ScriptWorker` below runs Appose scripts with
   the reference worker's semantics (see docs/protocol.md, "python3 -m
   tessera.worker as an Appose worker", and docs/migrating-from-appose.md).

2. Inside an *unmodified* Appose worker started with the Tessera arena inherited
   (TESSERA_ARENA_FD, TESSERA_SLOT), the tile loop runs as one long task::

       import tessera.appose
       tessera.appose.serve(task, handler)

   Tiles then flow through shared memory; only progress goes through Appose (as
   ``task.update`` messages). The loop ends when the host cancels the task, when
   the worker's main thread exits (stdin closed), or on ``Worker.request_stop``.

NDArrays travel as Appose does it: named POSIX shared-memory segments described
by ``{"appose_type":"ndarray","dtype":..,"shape":[..],"shm":{"appose_type":"shm",
"name":..,"rsize":..}}``. :class:`NDArray` and :class:`SharedMemory` here have the
names and methods of ``appose.NDArray`` / ``appose.SharedMemory``; when the
``appose`` package is not installed, ``import appose`` inside a script gets a small
module exposing these two classes, so scripts written for Appose run unchanged.
"""

from __future__ import annotations

import ast
import json
import math
import mmap
import os
import queue as _queue
import secrets
import select
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
from typing import Any, Dict, List, Optional

import numpy as np

from .sdk import Handler, Worker, context, handle_tile

try:  # CPython's own binding of shm_open/shm_unlink (no resource tracker involved).
    import _posixshmem
except ImportError:  # pragma: no cover - non-CPython
    _posixshmem = None

# ---------------------------------------------------------------------------------
# Shared memory and NDArrays (Appose conventions)

_created_lock = threading.Lock()
#: Segments this process created and has not handed to a host nor unlinked:
#: name -> (SharedMemory, task id or None). See ScriptWorker._guard_segments.
_created: Dict[str, "SharedMemory"] = {}
_current = threading.local()  # .task: the script task running on this thread


class SharedMemory:
    """A named POSIX shared-memory segment (``/dev/shm/<name>``), Appose style.

    ``SharedMemory(name=None, create=True, rsize=N)`` creates ``psm_<8 hex>``
    (mode 0600, ``O_EXCL``); ``SharedMemory(name)`` attaches. Unlike
    ``multiprocessing.shared_memory`` nothing is registered with a resource tracker,
    so attaching never leads to an unlink by someone who does not own the segment.
    """

    def __init__(self, name: Optional[str] = None, create: bool = False, rsize: int = 0, size: int = 0) -> None:
        rsize = int(rsize or size)
        self._mmap: Optional[mmap.mmap] = None
        self._buf: Optional[memoryview] = None
        self._unlink_on_dispose = create
        if create:
            if rsize <= 0:
                raise ValueError("rsize must be > 0")
            for _ in range(100):
                n = name or "psm_" + secrets.token_hex(4)
                try:
                    fd = _shm_open(n, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                    break
                except FileExistsError:
                    if name:
                        raise
            else:  # pragma: no cover - 100 collisions of 32 random bits
                raise FileExistsError("no free segment name")
            try:
                os.ftruncate(fd, rsize)
            except OSError:
                os.close(fd)
                _shm_unlink(n)
                raise
        else:
            if not name:
                raise ValueError("attaching needs a segment name")
            n = name
            fd = _shm_open(n, os.O_RDWR, 0)
        try:
            size_now = os.fstat(fd).st_size
            if size_now < rsize:
                raise ValueError(f"segment '{n}' has {size_now} bytes, fewer than rsize {rsize}")
            self._mmap = mmap.mmap(fd, size_now) if size_now > 0 else None
        finally:
            os.close(fd)
        self._name = n
        self._size = size_now
        self._rsize = rsize or size_now
        if create:
            task = getattr(_current, "task", None)
            self._task = task.uuid if task is not None else None
            with _created_lock:
                _created[n] = self

    # appose.SharedMemory / multiprocessing.shared_memory.SharedMemory surface
    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def rsize(self) -> int:
        return self._rsize

    @property
    def buf(self) -> memoryview:
        if self._buf is None:
            if self._mmap is None:
                raise ValueError(f"segment '{self._name}' is closed or empty")
            self._buf = memoryview(self._mmap)
        return self._buf

    def unlink_on_dispose(self, value: Optional[bool] = None) -> bool:
        if value is not None:
            self._unlink_on_dispose = bool(value)
        return self._unlink_on_dispose

    def close(self) -> None:
        """Unmaps this process's view (deferred while NumPy views still use it)."""
        if self._buf is not None:
            try:
                self._buf.release()
            except BufferError:
                return  # arrays still view it: the mapping goes with the last of them
            self._buf = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                return
            self._mmap = None

    def unlink(self) -> None:
        with _created_lock:
            _created.pop(self._name, None)
        try:
            _shm_unlink(self._name)
        except FileNotFoundError:
            pass

    def dispose(self) -> None:
        self.close()
        if self._unlink_on_dispose:
            self.unlink()

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"SharedMemory(name={self._name!r}, rsize={self._rsize})"


def _shm_open(name: str, flags: int, mode: int) -> int:
    if _posixshmem is not None:
        return _posixshmem.shm_open("/" + name, flags, mode)
    return os.open("/dev/shm/" + name, flags | os.O_NOFOLLOW, mode)  # pragma: no cover


def _shm_unlink(name: str) -> None:
    if _posixshmem is not None:
        _posixshmem.shm_unlink("/" + name)
    else:  # pragma: no cover
        os.unlink("/dev/shm/" + name)


class NDArray:
    """An n-dimensional array in a named segment, C order, data at byte 0.

    ``NDArray("float32", [2, 3])`` creates a segment; ``ndarray()`` is a NumPy view of
    it (no copy). An NDArray decoded from a request attaches to the host's segment.
    """

    def __init__(self, dtype: str, shape, shm: Optional[SharedMemory] = None, dims=None) -> None:
        self.dtype = str(np.dtype(dtype))
        self.shape = [int(s) for s in shape]
        self.dims = dims
        if shm is None:
            shm = SharedMemory(create=True, rsize=max(1, int(np.prod(self.shape, dtype=np.int64)) * np.dtype(dtype).itemsize))
        self.shm = shm

    def ndarray(self) -> np.ndarray:
        return np.ndarray(self.shape, dtype=self.dtype, buffer=self.shm.buf)

    def dispose(self) -> None:
        self.shm.dispose()

    def __enter__(self) -> "NDArray":
        return self

    def __exit__(self, *exc) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"NDArray(dtype={self.dtype!r}, shape={self.shape}, shm={self.shm!r})"


def install_appose_module() -> None:
    """Makes ``import appose`` work in scripts when the appose package is absent."""
    if "appose" in sys.modules:
        return
    try:
        import appose  # noqa: F401 - the real package wins
        return
    except ImportError:
        pass
    mod = types.ModuleType("appose", "Tessera's stand-in for the parts of appose a worker script uses.")
    mod.NDArray = NDArray
    mod.SharedMemory = SharedMemory
    sys.modules["appose"] = mod


def decode(value: Any) -> Any:
    """Request values: appose_type objects become NDArray / SharedMemory (attached)."""
    if isinstance(value, dict):
        kind = value.get("appose_type")
        if kind == "shm":
            return SharedMemory(value["name"], rsize=value.get("rsize", value.get("size", 0)))
        if kind == "ndarray":
            shm = decode(value["shm"])
            return NDArray(value["dtype"], value["shape"], shm, dims=value.get("dims"))
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class _Encoder:
    """Response values: NDArray/SharedMemory -> appose objects; NumPy scalars -> numbers;
    NaN/Infinity -> null (never emitted: strict JSON parsers reject them)."""

    def __init__(self) -> None:
        self.segments: List[str] = []

    def __call__(self, v: Any, path: str) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {str(k): self(x, f"{path}.{k}") for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, SharedMemory):
            self.segments.append(v.name)
            return {"appose_type": "shm", "name": v.name, "rsize": v.rsize}
        if isinstance(v, NDArray) or type(v).__name__ == "NDArray" and hasattr(v, "shm"):
            self.segments.append(v.shm.name)
            out = {"appose_type": "ndarray", "dtype": str(v.dtype), "shape": [int(s) for s in v.shape]}
            if getattr(v, "dims", None) is not None:
                out["dims"] = self(v.dims, path + ".dims")
            out["shm"] = {"appose_type": "shm", "name": v.shm.name, "rsize": int(getattr(v.shm, "rsize", v.shm.size))}
            return out
        if isinstance(v, np.generic):
            return self(v.item(), path)
        if isinstance(v, np.ndarray):
            raise TypeError(f"{path} is a numpy.ndarray: return it as an appose NDArray (shared memory) "
                            "or convert it with .tolist()")
        raise TypeError(f"{path} has type {type(v).__name__}, which has no JSON form")


def _dumps(obj: Dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")


# ---------------------------------------------------------------------------------
# The Appose script worker

_TERMINAL = ("COMPLETION", "CANCELATION", "FAILURE")


class Task:
    """The ``task`` object a script sees (appose.python_worker's Task surface)."""

    def __init__(self, worker: "ScriptWorker", uuid: str, script: str, inputs: Dict[str, Any], queue: Optional[str]):
        self._worker = worker
        self.uuid = uuid
        self.script = script
        self.inputs = inputs
        self.queue = queue
        self.outputs: Dict[str, Any] = {}
        self.cancel_requested = False
        self._lock = threading.Lock()
        self._launched = False
        self._finished = False

    def export(self, **kwargs: Any) -> None:
        """Makes variables visible to every later script (any name, `_` names too)."""
        self._worker.exports.update(kwargs)

    def update(self, message: Optional[str] = None, current: Optional[int] = None, maximum: Optional[int] = None,
               info: Optional[Dict[str, Any]] = None) -> None:
        args: Dict[str, Any] = {}
        if message is not None:
            args["message"] = str(message)
        for key, val in (("current", current), ("maximum", maximum)):
            if val is not None:
                try:
                    args[key] = int(val)
                except (TypeError, ValueError):
                    pass
        args["info"] = info if isinstance(info, dict) else None
        self._respond("UPDATE", args)

    def cancel(self) -> None:
        self._respond("CANCELATION")

    def fail(self, error: Optional[str] = None) -> None:
        self._respond("FAILURE", None if error is None else {"error": str(error)})

    @property
    def finished(self) -> bool:
        return self._finished

    def _respond(self, kind: str, args: Optional[Dict[str, Any]] = None) -> None:
        with self._lock:  # one LAUNCH, then UPDATEs, then exactly one terminal
            if self._finished:
                return
            if kind == "LAUNCH":
                if self._launched:
                    return
                self._launched = True
            elif not self._launched:
                self._launched = True
                self._worker._write({"task": self.uuid, "responseType": "LAUNCH"})
            msg = {"task": self.uuid, "responseType": kind}
            if args:
                enc = _Encoder()
                try:
                    msg.update(enc(args, "response"))
                except (TypeError, ValueError) as e:
                    if kind != "COMPLETION":
                        msg = {"task": self.uuid, "responseType": kind}
                        sys.stderr.write(f"tessera.worker: task {self.uuid}: dropped a field of {kind}: {e}\n")
                    else:
                        msg = {"task": self.uuid, "responseType": "FAILURE", "error": f"cannot send the outputs: {e}"}
                        kind = "FAILURE"
                if kind == "COMPLETION":
                    self._worker._handed_over(enc.segments)
            if kind in _TERMINAL:
                self._finished = True
            self._worker._write(msg)


class ScriptWorker:
    """The Appose request loop of ``python3 -m tessera.worker``.

    Threads: a reader (stdin -> requests), the main thread (runs script tasks in
    submission order), optionally ``threads`` pool threads for tasks without
    ``queue="main"``, and the tile loop when a handler serves tiles from the arena.
    """

    def __init__(self, protocol_fd: int, threads: int = 0, recycle_after: int = 0, max_rss_mb: float = 0.0,
                 reexec_argv: Optional[List[str]] = None) -> None:
        self.protocol_fd = protocol_fd
        self.reexec_argv = list(reexec_argv) if reexec_argv is not None else None
        self.exports = context  # one namespace: init script, task.export, handler modules
        self.threads = threads
        self.recycle_after = recycle_after
        self.max_rss_mb = max_rss_mb
        self.init_error: Optional[str] = None
        self.init_text: Optional[str] = None
        self.tasks: Dict[str, Task] = {}
        self.bad_lines = 0
        self.done_count = 0
        self._write_lock = threading.Lock()
        self._in_lock = threading.Lock()  # stdin is consumed only under this lock (recycling)
        self._pending_bytes = b""
        self._main_q: "_queue.Queue[Optional[Task]]" = _queue.Queue()
        self._pool_q: "_queue.Queue[Optional[Task]]" = _queue.Queue()
        self._pool: List[threading.Thread] = []
        self._eof = threading.Event()
        self._stop = threading.Event()
        self._active = 0
        self._active_lock = threading.Lock()
        self._tile_worker: Optional[Worker] = None
        self._tile_thread: Optional[threading.Thread] = None
        self._tile_error: Optional[str] = None
        self._recycling = False

    # ---- output ----
    def _write(self, msg: Dict[str, Any]) -> None:
        data = _dumps(msg)
        with self._write_lock:  # one writer; each line in one write(2) when it fits a pipe buffer
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.protocol_fd, view)
                except InterruptedError:
                    continue
                except (BrokenPipeError, OSError):
                    return  # the host is gone; stdin EOF follows
                view = view[n:]

    def _handed_over(self, names: List[str]) -> None:
        with _created_lock:
            for n in names:
                _created.pop(n, None)  # the host owns it now (it unlinks; Appose rule)

    # ---- init ----
    def run_init_script(self) -> None:
        """APPOSE_INIT_SCRIPT: run before any request is read; the file is deleted."""
        path = os.environ.get("APPOSE_INIT_SCRIPT")
        if not path:
            return
        try:
            with open(path, "r", encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            self.init_error = f"init script {path!r} cannot be read: {e}"
            sys.stderr.write(f"tessera.worker: {self.init_error}\n")
            return
        try:
            os.unlink(path)
        except OSError:
            pass
        self.init_text = text
        ns: Dict[str, Any] = {"__name__": "__appose_init__"}
        try:
            exec(compile(text, "<appose init script>", "exec"), ns)  # noqa: S102 - Appose scripts are code by contract
        except BaseException:  # noqa: BLE001 - the failure is the answer to every task
            self.init_error = "init script failed:\n" + traceback.format_exc()
            sys.stderr.write("tessera.worker: " + self.init_error)
            sys.stderr.flush()
            return
        ns.pop("__builtins__", None)
        ns.pop("__name__", None)
        self.exports.update(ns)  # `_` names too (the reference worker drops them)

    # ---- tiles ----
    def serve_tiles(self, handler: Handler, max_batch: int = 16, timeout: float = 0.1, batch: int = 0,
                    max_wait: float = 0.002) -> None:
        """Runs ``Worker.run(handler)`` on the arena, beside script tasks, on its own thread.

        With ``batch > 0`` the handler is a batch handler ``handler(batch, tiles)`` fed up to
        ``batch`` tiles at once (``Worker.run_batched``, see :mod:`tessera.batch`)."""
        if self._tile_thread is not None:
            raise RuntimeError("this worker already serves tiles")
        w = Worker.from_env()
        self._tile_worker = w

        def loop() -> None:
            try:
                if batch > 0:
                    w.run_batched(handler, max_batch=batch, max_wait=max_wait, timeout=timeout)
                else:
                    w.run(handler, max_batch=max_batch, timeout=timeout)
            except BaseException:  # noqa: BLE001 - keep the reason for tessera.stats / stderr
                self._tile_error = traceback.format_exc()
                sys.stderr.write("tessera.worker: tile loop stopped: " + self._tile_error)

        self._tile_thread = threading.Thread(target=loop, name="tessera-tiles", daemon=True)
        self._tile_thread.start()

    # ---- input ----
    def _reader(self) -> None:
        fd = 0
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([fd], [], [], 0.2)
            except InterruptedError:
                continue
            if not r:
                continue
            with self._in_lock:
                if self._recycling:
                    return
                try:
                    chunk = os.read(fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    if self._pending_bytes.strip():
                        line, self._pending_bytes = self._pending_bytes, b""
                        self._on_line(line)
                    break
                self._pending_bytes += chunk
                while b"\n" in self._pending_bytes:
                    line, _, self._pending_bytes = self._pending_bytes.partition(b"\n")
                    self._on_line(line)
        self._eof.set()
        self._main_q.put(None)

    def _on_line(self, raw: bytes) -> None:
        if not raw.strip():
            return  # blank lines are skipped (the reference worker treats one as EOF)
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("not a JSON object")
            uuid = req["task"]
            kind = req["requestType"]
            if not isinstance(uuid, str):
                raise ValueError("'task' is not a string")
        except (ValueError, KeyError) as e:
            self.bad_lines += 1
            sys.stderr.write(f"tessera.worker: ignoring request line ({e}): {raw[:120]!r}\n")
            return
        if kind == "CANCEL":
            task = self.tasks.get(uuid)
            if task is None:
                sys.stderr.write(f"No such task: {uuid}\n")
                return
            task.cancel_requested = True
            return
        if kind != "EXECUTE":
            self.bad_lines += 1
            sys.stderr.write(f"tessera.worker: ignoring unknown requestType {kind!r}\n")
            return
        if uuid in self.tasks:
            sys.stderr.write(f"tessera.worker: duplicate task id {uuid!r} ignored\n")
            return
        script = req.get("script")
        queue = req.get("queue")
        inputs = req.get("inputs") or {}
        task = Task(self, uuid, script if isinstance(script, str) else "", {}, queue if isinstance(queue, str) else None)
        self.tasks[uuid] = task
        task._raw_inputs = inputs if isinstance(inputs, dict) else {}
        if not isinstance(script, str):
            task.fail("EXECUTE without a string 'script'")
            self.tasks.pop(uuid, None)
            return
        if self.threads > 0 and task.queue != "main":
            self._pool_q.put(task)
        else:
            self._main_q.put(task)

    # ---- running tasks ----
    def _builtin(self, task: Task) -> Optional[Dict[str, Any]]:
        """tessera.* control scripts and the Appose start-up canary; None if not one."""
        s = task.script.strip()
        if s == "ready":
            if self.init_error:
                raise RuntimeError(self.init_error)
            return {}
        if s == "tessera.ready":
            if self.init_error:
                raise RuntimeError(self.init_error)
            if self._tile_worker is None:
                raise RuntimeError("worker is not serving tiles from a Tessera arena "
                                   "(no TESSERA_ARENA_FD, or no handler given or registered)")
            return {"pid": os.getpid(), "slot": self._tile_worker.slot}
        if s == "tessera.stats":
            out: Dict[str, Any] = dict(self._tile_worker.stats) if self._tile_worker is not None else {}
            out.update(bad_request_lines=self.bad_lines, tasks_done=self.done_count, pid=os.getpid())
            if self._tile_error:
                out["tile_loop_error"] = self._tile_error
            return out
        if s == "tessera.stop":
            self.request_stop()
            return {}
        return None

    def run_task(self, task: Task) -> None:
        _current.task = task
        task._respond("LAUNCH")
        saved_cwd = _getcwd()
        saved_path = list(sys.path)
        saved_env = _env_snapshot()
        try:
            if task.cancel_requested:
                task.cancel()
                return
            builtin = self._builtin(task)
            if builtin is not None:
                task.outputs.update(builtin)
                task._respond("COMPLETION", {"outputs": task.outputs})
                return
            if self.init_error:
                task.fail(self.init_error)
                return
            task.inputs = decode(getattr(task, "_raw_inputs", {}))
            binding: Dict[str, Any] = {"task": task}
            binding.update(self.exports)
            binding.update(task.inputs)
            block = ast.parse(task.script, mode="exec")
            last = None
            if block.body and hasattr(block.body[-1], "value") and not isinstance(block.body[-1], ast.Assign):
                last = ast.Expression(block.body.pop().value)
            exec(compile(block, "<string>", mode="exec"), binding)  # noqa: S102 - Appose scripts are code by contract
            result = eval(compile(last, "<string>", mode="eval"), binding) if last is not None else None  # noqa: S307
            if isinstance(result, dict):
                task.outputs.update(result)
            elif result is not None:
                task.outputs["result"] = result
            task._respond("COMPLETION", {"outputs": task.outputs})
        except BaseException:  # noqa: BLE001 - any script error (even SystemExit) fails only this task
            task.fail(traceback.format_exc())
        finally:
            _current.task = None
            self._restore(saved_cwd, saved_path, saved_env)
            self._guard_segments(task)
            self.tasks.pop(task.uuid, None)
            self.done_count += 1

    @staticmethod
    def _restore(cwd: Optional[str], path: List[str], env: Dict[bytes, bytes]) -> None:
        if cwd is not None and _getcwd() != cwd:
            try:
                os.chdir(cwd)
            except OSError:
                pass
        if sys.path != path:
            sys.path[:] = path
        now = _env_snapshot()
        if now != env:  # through os.environ, so that putenv/unsetenv follow
            for k in now.keys() - env.keys():
                os.environ.pop(os.fsdecode(k), None)
            for k, v in env.items():
                if now.get(k) != v:
                    os.environ[os.fsdecode(k)] = os.fsdecode(v)

    def _guard_segments(self, task: Task) -> None:
        """Unlinks segments the task created and did not hand over, unless exported."""
        keep = set()
        for v in self.exports.values():
            if isinstance(v, SharedMemory):
                keep.add(v.name)
            elif isinstance(v, NDArray):
                keep.add(v.shm.name)
        with _created_lock:
            mine = [s for n, s in _created.items() if s._task == task.uuid and n not in keep]
        for s in mine:
            s.unlink()

    def _pool_loop(self) -> None:
        while True:
            task = self._pool_q.get()
            if task is None:
                return
            with self._active_lock:
                self._active += 1
            try:
                self.run_task(task)
            finally:
                with self._active_lock:
                    self._active -= 1

    def request_stop(self) -> None:
        self._stop.set()
        if self._tile_worker is not None:
            self._tile_worker.request_stop()
        for t in list(self.tasks.values()):
            t.cancel_requested = True
        self._main_q.put(None)

    # ---- recycling ----
    def _rss_mb(self) -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0

    def _should_recycle(self) -> bool:
        if self._tile_thread is not None or self.threads > 0 or self.reexec_argv is None:
            return False
        if self.recycle_after > 0 and self.done_count >= self.recycle_after:
            return True
        return self.max_rss_mb > 0 and self._rss_mb() > self.max_rss_mb

    def _recycle(self) -> None:
        """Re-executes this process with the same argv: requests read but not run, and
        the unread part of the stdin buffer, are handed to the fresh process; the
        init script is replayed there."""
        with self._in_lock:
            self._recycling = True
            pending: List[bytes] = []
            while True:
                try:
                    t = self._main_q.get_nowait()
                except _queue.Empty:
                    break
                if t is not None:
                    req = {"task": t.uuid, "requestType": "EXECUTE", "script": t.script,
                           "inputs": getattr(t, "_raw_inputs", {}), "queue": t.queue}
                    pending.append(json.dumps(req).encode() + b"\n")
                    if t.cancel_requested:
                        pending.append(json.dumps({"task": t.uuid, "requestType": "CANCEL"}).encode() + b"\n")
            fd, replay = tempfile.mkstemp(prefix="tessera-replay-", suffix=".jsonl")
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join(pending) + self._pending_bytes)
            env = dict(os.environ, TESSERA_APPOSE_REPLAY=replay, TESSERA_APPOSE_RECYCLED=str(int(
                os.environ.get("TESSERA_APPOSE_RECYCLED", "0")) + 1))
            if self.init_text is not None:
                fd, init = tempfile.mkstemp(prefix="tessera-init-", suffix=".py")
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(self.init_text)
                env["APPOSE_INIT_SCRIPT"] = init
            else:
                env.pop("APPOSE_INIT_SCRIPT", None)
            sys.stderr.write(f"tessera.worker: recycling after {self.done_count} tasks ({self._rss_mb():.0f} MiB RSS)\n")
            sys.stderr.flush()
            for n in list(_created):
                _shm_unlink_quiet(n)
            os.dup2(self.protocol_fd, 1)  # the fresh process finds the protocol on fd 1 again
            os.execve(sys.executable, [sys.executable] + self.reexec_argv, env)

    def _replay(self) -> None:
        path = os.environ.pop("TESSERA_APPOSE_REPLAY", None)
        if not path:
            return
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.unlink(path)
        except OSError as e:
            sys.stderr.write(f"tessera.worker: cannot replay requests from {path}: {e}\n")
            return
        lines = data.split(b"\n")
        self._pending_bytes = lines.pop()  # unterminated tail: completed by the next read
        for line in lines:
            self._on_line(line)

    # ---- main loop ----
    def run(self) -> int:
        """Serves requests until stdin EOF (or tessera.stop / SIGTERM); returns 0."""
        self._replay()
        reader = threading.Thread(target=self._reader, name="tessera-appose-reader", daemon=True)
        reader.start()
        for i in range(self.threads):
            t = threading.Thread(target=self._pool_loop, name=f"tessera-appose-{i}", daemon=True)
            t.start()
            self._pool.append(t)
        while True:
            try:
                task = self._main_q.get(timeout=0.5)
            except _queue.Empty:
                if self._stop.is_set() or (self._eof.is_set() and self._main_q.empty()):
                    break
                continue
            if task is None:
                if self._stop.is_set() or self._eof.is_set():
                    if self._main_q.empty():
                        break
                continue
            self.run_task(task)
            if not self._eof.is_set() and not self._stop.is_set() and self._should_recycle():
                self._recycle()
        # stdin closed or stop requested: pool tasks finish, then the tile loop stops.
        for _ in self._pool:
            self._pool_q.put(None)
        for t in self._pool:
            t.join()
        if self._tile_worker is not None:
            self._tile_worker.request_stop()
        if self._tile_thread is not None:
            self._tile_thread.join(30)
        with _created_lock:
            left = list(_created)
        for n in left:
            _shm_unlink_quiet(n)
        return 0


def _shm_unlink_quiet(name: str) -> None:
    with _created_lock:
        _created.pop(name, None)
    try:
        _shm_unlink(name)
    except OSError:
        pass


def _env_snapshot() -> Dict[bytes, bytes]:
    """os.environ as bytes; its raw mapping when CPython exposes it (50x faster than
    decoding every variable, which dominated the cost of a trivial task)."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return dict(data)
    return {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}


def _getcwd() -> Optional[str]:
    try:
        return os.getcwd()
    except OSError:
        return None


def install_stop_signals(worker: ScriptWorker) -> None:
    """SIGTERM / SIGINT: stop taking requests, let the running task finish, exit 0."""
    def on_signal(signum, frame):  # noqa: ARG001
        sys.stderr.write(f"tessera.worker: signal {signum}: stopping\n")
        worker.request_stop()

    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(s, on_signal)
        except (ValueError, OSError):
            pass


# ---------------------------------------------------------------------------------
# Inside an unmodified Appose worker

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
