"""Host side: the embedded broker, worker pools and streams (see tessera.Client)."""

from __future__ import annotations

import ctypes
import fnmatch
import json
import os
import select
import signal
import subprocess
import time
import uuid
from typing import Dict, List, Mapping, Optional, Sequence

from . import _host


class WorkerStartError(RuntimeError):
    """A pool worker exited or reported a failure before it was ready."""


# What a worker inherits from this process, as the C++ supervisor does
# (broker/src/supervisor/process.cpp): nothing else (no tokens, no secrets).
_ENV_ALLOW = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TMPDIR", "PYTHONPATH", "TZ", "USER", "LOGNAME")
_PR_SET_PDEATHSIG = 1


def _scrubbed_env(extra: Optional[Mapping[str, str]]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if any(fnmatch.fnmatchcase(k, a) for a in _ENV_ALLOW)}
    env.update(extra or {})
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _PoolProcess:
    def __init__(self, index: int, slot: int, proc: subprocess.Popen) -> None:
        self.index = index
        self.slot = slot
        self.proc = proc
        self.buffer = b""
        self.dead = False

    def request(self, script: str, inputs: Optional[dict], timeout: float) -> dict:
        """Sends one Appose EXECUTE and waits for its COMPLETION/FAILURE."""
        task = uuid.uuid4().hex
        line = json.dumps({"task": task, "requestType": "EXECUTE", "script": script, "inputs": inputs or {}})
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buffer:
                raw, _, self.buffer = self.buffer.partition(b"\n")
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if msg.get("task") != task:
                    continue
                kind = msg.get("responseType")
                if kind == "COMPLETION":
                    return msg.get("outputs") or {}
                if kind in ("FAILURE", "CANCELATION"):
                    raise WorkerStartError(f"worker {self.index}: {script!r} failed: {msg.get('error', kind)}")
            left = end - time.monotonic()
            if left <= 0:
                raise WorkerStartError(f"worker {self.index}: no answer to {script!r} within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    rc = self.proc.wait(timeout=5)
                    raise WorkerStartError(f"worker {self.index} exited ({_describe_exit(rc)}) before answering {script!r}")
                self.buffer += chunk


def _describe_exit(rc: Optional[int]) -> str:
    if rc is None:
        return "still running"
    return f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"


class Client:
    """An embedded Tessera broker and its streams (one thread uses a Client).

    The data path (alloc, submit, poll, cancel, epochs) is the C++ client; this
    class adds worker pools started from Python.
    """

    def __init__(self, native: "_host.Client") -> None:
        self._c = native
        self._pool: Dict[int, _PoolProcess] = {}
        self._next_reap = 0.0

    @classmethod
    def embedded(cls, classes: Sequence = (), n_rings: int = 64, ring_capacity: int = 1024, prefault: bool = False,
                 max_in_flight: int = 4096, worker_window: int = 64, spin_us: int = 50, sleep: bool = True) -> "Client":
        """Starts an embedded broker on a fresh arena.

        ``classes``: list of (block_size, block_count) size classes (default: 64 KiB
        to 4 MiB). ``spin_us``/``sleep``: how the client waits for results.
        """
        return cls(_host.Client.embedded(list(classes), n_rings, ring_capacity, prefault, max_in_flight,
                                            worker_window, spin_us, sleep))

    @classmethod
    def connect(cls, path: str, max_in_flight: int = 4096, worker_window: int = 64, spin_us: int = 50,
                sleep: bool = True, timeout: float = 10.0) -> "Client":
        """Connects to a running ``tessera-broker --listen PATH``: its arena and its workers.

        The data path is the same as with :meth:`embedded`; the broker process owns the
        workers (restarts, recovery) and reclaims this client's blocks if it dies.
        """
        return cls(_host.Client.connect(path, max_in_flight, worker_window, spin_us, sleep, timeout))

    # ---- worker pool ----
    def spawn_worker(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, name: str = "worker",
                     stderr=None) -> int:
        """Starts one worker process attached to this client's arena; returns its index.

        The arena descriptor is inherited (TESSERA_ARENA_FD/TESSERA_SLOT in the
        environment); stdin/stdout carry the Appose protocol. Does not wait for ready.
        The worker gets the supervisor's scrubbed environment plus ``env``, and is
        killed when this process exits.
        """
        index, slot, fd = self._c.add_external_worker(name)
        child_env = _scrubbed_env(env)
        child_env["TESSERA_ARENA_FD"] = str(fd)
        child_env["TESSERA_SLOT"] = str(slot)
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                env=child_env, pass_fds=(fd,), preexec_fn=_die_with_parent)
        self._pool[index] = _PoolProcess(index, slot, proc)
        self._c.set_worker_pid(index, proc.pid)
        return index

    def start_pool(self, argv: Sequence[str], count: int = 1, env: Optional[Mapping[str, str]] = None,
                   init_scripts: Sequence[str] = (), max_retries: int = 1, restart: bool = True,
                   ready_timeout: float = 30.0, cancel_grace: float = 2.0, devices: Sequence[str] = ()) -> None:
        """Starts ``count`` workers under the broker's own supervisor, exactly as C++
        ``Client::start_pool``: returns once each is ready; deaths are detected by the
        broker, tiles retried (``max_retries``), workers restarted with backoff.

        The workers get a scrubbed environment (PATH, HOME, PYTHONPATH, locale, ...)
        plus ``env``, and die with this process. Raises TesseraError with the worker's
        own message on failure. ``devices`` (e.g. ``["0", "1"]``): one worker per device
        instead of ``count``, each with ``CUDA_VISIBLE_DEVICES`` set to its own device.
        """
        self._c.start_pool(list(argv), count, dict(env or {}), list(init_scripts), max_retries, restart,
                           ready_timeout, cancel_grace, [str(d) for d in devices])

    start_supervised_pool = start_pool  # the name this method had before start_pool was supervised

    def start_unsupervised_pool(self, argv: Sequence[str], count: int = 1, env: Optional[Mapping[str, str]] = None,
                                init_scripts: Sequence[str] = (), ready_timeout: float = 30.0,
                                stderr=None, devices: Sequence[str] = ()) -> List[int]:
        """Starts ``count`` workers from Python, unsupervised: returns once each
        reported ready, with their indices; :meth:`worker_process` gives each Popen.

        Nothing restarts them: a death is noticed in :meth:`poll` and the worker's
        tiles are retried on the others or failed. The workers get the same scrubbed
        environment as :meth:`start_pool` plus ``env``, and die with this process.
        ``init_scripts`` are Appose scripts run in order before the readiness check.
        Raises WorkerStartError with the worker's own message if one fails.
        ``devices``: one worker per device instead of ``count``, each with
        ``CUDA_VISIBLE_DEVICES`` set to its own device.
        """
        if devices:
            started = [self.spawn_worker(argv, env={**(env or {}), "CUDA_VISIBLE_DEVICES": str(d)}, stderr=stderr)
                       for d in devices]
        else:
            started = [self.spawn_worker(argv, env=env, stderr=stderr) for _ in range(count)]
        for index in started:
            p = self._pool[index]
            for script in init_scripts:
                p.request(script, {}, ready_timeout)
            p.request("tessera.ready", {}, ready_timeout)
        return started

    def worker_request(self, index: int, script: str, inputs: Optional[dict] = None, timeout: float = 10.0) -> dict:
        """Runs an Appose script on pool worker ``index`` (e.g. 'tessera.stats')."""
        return self._pool[index].request(script, inputs, timeout)

    def worker_process(self, index: int) -> subprocess.Popen:
        return self._pool[index].proc

    def check_workers(self) -> List[int]:
        """Reports pool workers that exited to the broker (their tiles are retried or
        failed, their blocks reclaimed). Returns the indices found dead now."""
        dead = []
        for p in self._pool.values():
            if p.dead:
                continue
            rc = p.proc.poll()
            if rc is not None:
                p.dead = True
                self._c.worker_died(p.index, f"worker {p.index} (pid {p.proc.pid}) {_describe_exit(rc)}")
                dead.append(p.index)
        return dead

    # ---- data path (delegated) ----
    def poll(self, max: int = 64, timeout: float = 0.0) -> List["_host.TileResult"]:
        """Delivers up to ``max`` outcomes, waiting up to ``timeout`` s (GIL released)."""
        if self._pool:
            now = time.monotonic()
            if now >= self._next_reap:
                self._next_reap = now + 0.02
                self.check_workers()
            if timeout > 0.05:
                # Wake up regularly to notice dead workers.
                end = now + timeout
                while True:
                    got = self._c.poll(max, min(0.05, max_left(end)))
                    if got or time.monotonic() >= end:
                        return got
                    self.check_workers()
        return self._c.poll(max, timeout)

    def __getattr__(self, name: str):
        return getattr(self._c, name)

    @property
    def native(self) -> "_host.Client":
        return self._c

    def close(self, timeout: float = 5.0) -> None:
        """Stops pool workers (stdin EOF, then SIGKILL after ``timeout``) and the broker."""
        for p in self._pool.values():
            try:
                p.proc.stdin.close()
            except OSError:
                pass
        end = time.monotonic() + timeout
        for p in self._pool.values():
            try:
                p.proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
            if p.proc.stdout:
                p.proc.stdout.close()
        self._pool.clear()
        self._c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def max_left(end: float) -> float:
    return max(0.0, end - time.monotonic())
