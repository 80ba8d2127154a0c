"""A test Appose host: what appose-python's / appose-java's Service does on the wire.

It starts a worker process with three pipes, writes EXECUTE / CANCEL lines (json.dumps,
keys in the Python client's order), and reads responses on one thread, stamping each
with its arrival time. Every stdout line must be strict ASCII JSON (no NaN tokens);
anything else is kept in `invalid` and fails the tests that check it.

`BrokerDriver` runs the same scripts through `tessera-broker --appose` + worker.run.
"""

import json
import os
import subprocess
import tempfile
import threading
import time
import uuid

TERMINAL = ("COMPLETION", "FAILURE", "CANCELATION")


def strict_loads(line):
    def bad_constant(tok):
        raise ValueError("non-JSON constant " + tok)
    return json.loads(line, parse_constant=bad_constant)


class ApposeHost:
    def __init__(self, argv, env=None, init_script=None, cwd=None):
        env = dict(os.environ if env is None else env)
        self.init_path = None
        if init_script is not None:  # Service.init(): a temp file named by APPOSE_INIT_SCRIPT
            fd, self.init_path = tempfile.mkstemp(prefix=f"appose-init-{os.getpid()}-", suffix=".txt")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(init_script)
            env["APPOSE_INIT_SCRIPT"] = self.init_path
        self._attach(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=env, cwd=cwd))

    @classmethod
    def adopt(cls, proc):
        """A host for a worker process started elsewhere (stdin/stdout pipes; stderr not read)."""
        self = cls.__new__(cls)
        self.init_path = None
        self._attach(proc)
        return self

    def _attach(self, proc):
        self.proc = proc
        self.cond = threading.Condition()
        self.msgs = {}       # task -> [(t, msg)]
        self.invalid = []    # stdout lines that are not strict ASCII JSON objects
        self.stderr = []
        self.write_lock = threading.Lock()
        self.t_out = threading.Thread(target=self._read_out, daemon=True)
        self.t_err = threading.Thread(target=self._read_err if proc.stderr else (lambda: None), daemon=True)
        self.t_out.start()
        self.t_err.start()

    def _read_out(self):
        for raw in self.proc.stdout:
            t = time.monotonic()
            try:
                if not raw.endswith(b"\n") or not raw.isascii():
                    raise ValueError("not one ASCII line")
                msg = strict_loads(raw)
                if not isinstance(msg, dict) or "task" not in msg:
                    raise ValueError("not a response object")
            except ValueError:
                with self.cond:
                    self.invalid.append(raw)
                continue
            with self.cond:
                self.msgs.setdefault(msg["task"], []).append((t, msg))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _read_err(self):
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace"))

    def stderr_text(self):
        return "".join(self.stderr)

    def send(self, obj):
        line = json.dumps(obj) + "\n"
        with self.write_lock:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()

    def start(self, script, inputs=None, queue=None, task=None, **_routing):
        """Sends EXECUTE; returns the task id. (`_routing`: broker-only worker.run keys.)"""
        task = task or uuid.uuid4().hex
        with self.cond:
            self.msgs.setdefault(task, [])
        self.send({"task": task, "requestType": "EXECUTE", "script": script, "inputs": inputs or {}, "queue": queue})
        return task

    def cancel(self, task):
        self.send({"task": task, "requestType": "CANCEL"})

    def wait_for(self, pred, timeout=30.0):
        end = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def wait(self, task, timeout=30.0, settle=0.02):
        """Every (time, message) of `task` once its terminal arrived; AssertionError on timeout.
        `settle`: then wait that long, so that a (wrong) second terminal would be seen."""
        ok = self.wait_for(lambda: any(m["responseType"] in TERMINAL for _, m in self.msgs.get(task, [])), timeout)
        if not ok:
            raise AssertionError(f"task {task} did not finish within {timeout} s: {self.msgs.get(task)}; "
                                 f"stderr: {self.stderr_text()[-2000:]}")
        if settle > 0:
            time.sleep(settle)
        with self.cond:
            return list(self.msgs[task])

    def run(self, script, inputs=None, queue=None, timeout=30.0, **routing):
        return [m for _, m in self.wait(self.start(script, inputs, queue, **routing), timeout)]

    def wait_launch(self, task, timeout=20.0):
        return self.wait_for(lambda: any(m["responseType"] == "LAUNCH" for _, m in self.msgs.get(task, [])), timeout)

    def wait_stderr(self, text, timeout=10.0):
        """stderr is read on its own thread (no condition): poll it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.stderr_text():
                return True
            time.sleep(0.02)
        return text in self.stderr_text()

    def close(self, timeout=20.0):
        """Closes stdin (Service.close()) and returns the exit code (SIGKILL after timeout)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.t_out.join(5)
        self.t_err.join(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        if self.init_path and os.path.exists(self.init_path):
            os.unlink(self.init_path)
        return rc


def kinds(msgs):
    return [m["responseType"] for m in msgs]


def outputs(msgs):
    return msgs[-1].get("outputs", {}) if msgs and msgs[-1]["responseType"] == "COMPLETION" else None


class BrokerDriver:
    """`tessera-broker --appose` with `count` pool workers running `worker_argv`; the
    same start/cancel/wait/run surface as ApposeHost (scripts go through worker.run)."""

    def __init__(self, broker, worker_argv, count=1, init_script=None, env=None, worker_env=None, start_inputs=None):
        self.host = ApposeHost([broker, "--appose"], env=env, init_script=init_script)
        inputs = {"argv": list(worker_argv), "count": count, "env": dict(worker_env or {}),
                  "ready_timeout_ms": 30000}
        inputs.update(start_inputs or {})
        msgs = self.host.run("workers.start", inputs, timeout=60)
        if msgs[-1]["responseType"] != "COMPLETION":
            raise AssertionError(f"workers.start failed: {msgs[-1]}; stderr: {self.host.stderr_text()[-3000:]}")
        self.workers = msgs[-1]["outputs"]["workers"]
        self.pids = msgs[-1]["outputs"]["pids"]
        self.msgs = self.host.msgs
        self.cond = self.host.cond

    def start(self, script, inputs=None, queue=None, task=None, **extra):
        run = {"script": script, "inputs": inputs or {}}
        if queue is not None:
            run["queue"] = queue
        run.update(extra)
        return self.host.start("worker.run", run, task=task)

    def cancel(self, task):
        self.host.cancel(task)

    def wait(self, task, timeout=30.0):
        return self.host.wait(task, timeout)

    def wait_launch(self, task, timeout=20.0):
        return self.host.wait_launch(task, timeout)

    def wait_stderr(self, text, timeout=10.0):
        return self.host.wait_stderr(text, timeout)

    def run(self, script, inputs=None, queue=None, timeout=30.0, **extra):
        return [m for _, m in self.wait(self.start(script, inputs, queue, **extra), timeout)]

    def op(self, script, inputs=None, timeout=30.0):
        return self.host.run(script, inputs, timeout=timeout)

    @property
    def invalid(self):
        return self.host.invalid

    def stderr_text(self):
        return self.host.stderr_text()

    def close(self, timeout=20.0):
        return self.host.close(timeout)
