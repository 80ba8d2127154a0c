"""``python3 -m tessera.worker [MODULE:HANDLER]``: a Tessera worker that is also an Appose worker.

Started by any Appose host (appose-java or appose-python ``Service``), with or
without a handler argument, it is a drop-in for ``appose.python_worker``: it runs
EXECUTE scripts with the reference worker's semantics (LAUNCH, live UPDATEs from
``task.update``, exactly one terminal; inputs as variables; ``task.export``;
APPOSE_INIT_SCRIPT; NDArrays in named shared memory). Differences by design are
listed in docs/protocol.md: one task at a time in submission order (``--threads``
opts into concurrency), ``print()`` never reaches the protocol (fd 1 is pointed at
stderr, the protocol has a private descriptor), cwd / sys.path / os.environ are
restored after each task, ``_`` names are exported too.

Started by a Tessera broker (arena inherited: TESSERA_ARENA_FD, TESSERA_SLOT), the
same process also serves tiles: the handler given here, or one registered by a
script with :func:`serve`, runs as ``handler(input_array, tile)`` on its own thread,
beside the script tasks (see docs/protocol.md for why beside and not between).

Initialisation (``--init MODULE:FUNC``, importing the handler) runs before any
request is read; if it fails the process prints the traceback and exits with
status 2. A failing APPOSE_INIT_SCRIPT does not end the process: every task then
fails with the init traceback (it is also printed on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any, Callable, Optional

from .sdk import Handler, context  # noqa: F401 - `context` is part of this module's API

_server = None  # the running ScriptWorker (set by main)


def serve(handler: Handler, max_batch: int = 16, timeout: float = 0.1) -> None:
    """Registers ``handler`` for the tiles of the arena this worker was started with.

    Call it from a script (or the init script) of a worker started by a Tessera
    broker: the tile loop starts at once on its own thread and the script goes on.
    """
    if _server is None:
        raise RuntimeError("tessera.worker.serve() works inside `python3 -m tessera.worker` only")
    _server.serve_tiles(handler, max_batch=max_batch, timeout=timeout)


def resolve(spec: str) -> Callable[..., Any]:
    """'package.module:function' -> the function."""
    if ":" not in spec:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m tessera.worker", description=__doc__.splitlines()[0])
    p.add_argument("handler", nargs="?", default=None,
                   help="MODULE:FUNCTION called as handler(input_array, tile) on tiles (optional)")
    p.add_argument("--max-batch", type=int, default=16, help="tiles taken at once (default 16)")
    p.add_argument("--timeout", type=float, default=0.1, help="seconds per wait for tiles (default 0.1)")
    p.add_argument("--init", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="run before the worker reads requests (repeatable)")
    p.add_argument("--path", action="append", default=[], metavar="DIR", help="prepend DIR to sys.path (repeatable)")
    p.add_argument("--spin-us", type=int, default=50, help="spin before sleeping on the doorbell (default 50)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("TESSERA_APPOSE_THREADS", "0")),
                   help="run tasks without queue='main' on N threads, concurrently "
                        "(default 0: every task on the main thread, one at a time, in submission order)")
    p.add_argument("--recycle-after", type=int, default=int(os.environ.get("TESSERA_APPOSE_RECYCLE_AFTER", "0")),
                   metavar="N", help="re-execute this process after N tasks (init script replayed)")
    p.add_argument("--max-rss-mb", type=float, default=float(os.environ.get("TESSERA_APPOSE_MAX_RSS_MB", "0")),
                   metavar="MB", help="re-execute this process after a task that left it above MB resident")
    p.add_argument("--batch", type=int, default=0, metavar="N",
                   help="HANDLER is a batch handler(batch, tiles) fed up to N tiles at once (see tessera.batch)")
    p.add_argument("--max-wait", type=float, default=0.002, metavar="S",
                   help="with --batch: a partial batch runs once its oldest tile waited S seconds (default 0.002)")
    p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                   help="keep: freed memory stays in the process for reuse, so a model's per-batch "
                        "buffers are not faulted in again on every call (tessera.allocator); "
                        "default: glibc's own settings (default: keep)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    global _server
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    if args.malloc == "keep":
        from .allocator import keep_freed_memory

        keep_freed_memory()  # before the handler module and its model allocate anything
    # The protocol belongs to this module: a private close-on-exec copy of fd 1, and fd 1
    # (hence print(), sys.stdout, C printf, child processes) pointed at stderr from now on.
    sys.stdout.flush()
    protocol = os.dup(1)  # non-inheritable
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)

    from .appose import ScriptWorker, install_appose_module, install_stop_signals

    install_appose_module()
    server = ScriptWorker(protocol, threads=max(0, args.threads), recycle_after=max(0, args.recycle_after),
                          max_rss_mb=max(0.0, args.max_rss_mb), reexec_argv=["-m", "tessera.worker", *raw_argv])
    _server = server
    # `python -m` runs this file as __main__: make `import tessera.worker` in scripts and
    # handler modules find this very module (its _server, its context), not a second copy.
    this = sys.modules.setdefault("tessera.worker", sys.modules[__name__])
    this._server = server
    package = sys.modules.get("tessera")
    if package is not None and not hasattr(package, "worker"):
        package.worker = this
    handler: Optional[Handler] = None
    try:
        for d in reversed(args.path):
            sys.path.insert(0, d)
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        if args.handler:
            handler = resolve(args.handler)
        for spec in args.init:
            resolve(spec)()
    except BaseException:  # noqa: BLE001 - report any init failure, exit non-zero
        traceback.print_exc()
        sys.stderr.write(f"tessera.worker: initialisation failed: {sys.exc_info()[1]}\n")
        sys.stderr.flush()
        return 2
    server.run_init_script()
    if handler is not None and server.init_error is None:
        if os.environ.get("TESSERA_ARENA_FD"):
            try:
                server.serve_tiles(handler, max_batch=args.max_batch, timeout=args.timeout,
                                   batch=args.batch, max_wait=args.max_wait)
            except Exception as e:  # noqa: BLE001 - cannot attach: say so, exit non-zero
                sys.stderr.write(f"tessera.worker: cannot start: {e}\n")
                return 2
        else:
            sys.stderr.write(f"tessera.worker: no Tessera arena (TESSERA_ARENA_FD unset): {args.handler} "
                             "imported, tiles not served; running Appose scripts only\n")
    install_stop_signals(server)
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
