"""``python3 -m tessera.worker MODULE:HANDLER``: a standalone Tessera worker process.

The broker spawns it with the arena inherited (TESSERA_ARENA_FD, TESSERA_SLOT) and
speaks the Appose protocol on its stdin/stdout. The protocol runs in the C++
WorkerRuntime: it keeps a private copy of the protocol descriptor and points fd 1 at
stderr, so ``print()`` in user code never reaches the protocol.

The handler is called as ``handler(input_array, tile)`` and returns an array (copied
into an output block unless it came from ``tile.output``) or None after answering the
tile itself. Initialisation (``--init MODULE:FUNC``, or the Appose init script named by
APPOSE_INIT_SCRIPT) runs before the worker can report ready; if it fails, the
process prints the traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any, Callable, Dict

from . import _worker as _tessera  # the worker SDK's native module
from .sdk import Worker, context  # noqa: F401 - `context` is part of this module's API


class _ScriptTask:
    """The part of Appose's ``task`` object a script may use here."""

    def __init__(self, inputs: Dict[str, Any]) -> None:
        self.inputs = inputs
        self.outputs: Dict[str, Any] = {}
        self.cancel_requested = False

    def update(self, message: Any = None, current: Any = None, maximum: Any = None) -> None:
        pass  # scripts here finish synchronously; there is nobody to stream updates to


def run_script(script: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
    """Runs an Appose script (init or EXECUTE) in the shared namespace; returns task.outputs."""
    task = _ScriptTask(inputs or {})
    context.update(inputs or {})
    context["task"] = task
    exec(compile(script, "<tessera script>", "exec"), context)  # noqa: S102 - Appose scripts are code by contract
    return task.outputs


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
    p.add_argument("handler", help="MODULE:FUNCTION called as handler(input_array, tile)")
    p.add_argument("--max-batch", type=int, default=16, help="tiles taken at once (default 16)")
    p.add_argument("--timeout", type=float, default=0.1, help="seconds per wait for tiles (default 0.1)")
    p.add_argument("--init", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="run before the worker reports ready (repeatable)")
    p.add_argument("--path", action="append", default=[], metavar="DIR", help="prepend DIR to sys.path (repeatable)")
    p.add_argument("--spin-us", type=int, default=50, help="spin before sleeping on the doorbell (default 50)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # User code may print while it is imported or initialised, before the runtime
    # owns the protocol: send fd 1 to stderr for that stretch, then give it back.
    sys.stdout.flush()
    protocol = os.dup(1)
    os.dup2(2, 1)
    try:
        for d in reversed(args.path):
            sys.path.insert(0, d)
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        handler = resolve(args.handler)
        for spec in args.init:
            resolve(spec)()
    except BaseException:  # noqa: BLE001 - report any init failure, exit non-zero
        traceback.print_exc()
        sys.stderr.write(f"tessera.worker: initialisation failed: {sys.exc_info()[1]}\n")
        sys.stderr.flush()
        return 2
    finally:
        sys.stdout.flush()
        os.dup2(protocol, 1)
        os.close(protocol)

    try:
        native = _tessera.Worker._with_runtime(on_script=run_script, spin_us=args.spin_us)
    except _tessera.TesseraError as e:
        sys.stderr.write(f"tessera.worker: cannot start: {e}\n")
        return 2
    sys.stdout.reconfigure(line_buffering=True)  # now goes to stderr
    worker = Worker(native, runtime=True)
    worker.run(handler, max_batch=args.max_batch, timeout=args.timeout)
    return native.finish()


if __name__ == "__main__":
    sys.exit(main())
