"""`python3 -m tessera.worker` as a real process: per-tile error isolation, stray
prints, malformed protocol lines, init before ready, init failures, kill -9."""

import json
import os
import select
import signal
import tempfile
import time
import unittest

import numpy as np

from tessera.client import WorkerStartError
from tessera_test_support import (collect, python_worker, random_rgb, reap, small_client, spawn_script, stderr_file,
                                  submit_rgb, wait_until, worker_env)


def read_protocol(proc, task, timeout=20.0):
    """Reads raw protocol lines until `task` terminates; returns every line read."""
    lines, buf = [], b""
    end = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            lines.append(line)
            msg = json.loads(line)  # every line on the protocol must be one JSON object
            if msg.get("task") == task and msg.get("responseType") in ("COMPLETION", "FAILURE"):
                return lines
    raise AssertionError(f"task {task} did not finish; read {lines!r} + {buf!r}")


def execute(proc, task, script):
    proc.stdin.write((json.dumps({"task": task, "requestType": "EXECUTE", "script": script, "inputs": {}}) + "\n").encode())
    proc.stdin.flush()


class WorkerProcessTest(unittest.TestCase):
    def setUp(self):
        self.client = small_client()
        self.addCleanup(self.client.close)
        self.rng = np.random.default_rng(7)

    def test_handler_exception_fails_only_that_tile_with_the_traceback(self):
        self.client.start_unsupervised_pool(python_worker("numpy_worker:handler"), env=worker_env(), stderr=stderr_file(self))
        s = self.client.open_stream(ordered=True)
        ops = [0, 3, 0, 3, 1]
        for op in ops:
            submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=op)
        got = collect(self.client, len(ops))
        self.assertEqual([r.outcome for r in got], ["completed", "failed", "completed", "failed", "completed"])
        for r in (got[1], got[3]):
            self.assertIn("Traceback (most recent call last)", r.error)
            self.assertIn(f"RuntimeError: op 3 always fails (tile {r.seq})", r.error)
            self.assertIn("numpy_worker.py", r.error)

    @unittest.skipIf(any(rt in os.environ.get("LD_PRELOAD", "") for rt in ("libasan", "libtsan")),
                     "a sanitizer's allocator replaces glibc's (mallopt and mallinfo2 see nothing)")
    def test_worker_keeps_freed_memory_unless_told_otherwise(self):
        # --malloc keep (the default): a 4 MiB array comes from the heap, not from its own mmap.
        for extra, from_mmap in (([], False), (["--malloc", "default"], True)):
            with self.subTest(malloc=extra or "keep"):
                client = small_client()
                self.addCleanup(client.close)
                client.start_unsupervised_pool(python_worker("probe_handlers:malloc_probe", *extra), env=worker_env(),
                                               stderr=stderr_file(self))
                s = client.open_stream()
                submit_rgb(client, s, random_rgb(self.rng, 4, 4))
                r = collect(client, 1)[0]
                self.assertEqual(r.outcome, "completed", r.error)
                held, size = int(r.output[0]), int(r.output[1])
                if from_mmap:
                    self.assertGreaterEqual(held, size)
                else:
                    self.assertLess(held, size)

    def test_handler_returning_none_without_answering_fails_the_tile(self):
        self.client.start_unsupervised_pool(python_worker("probe_handlers:forgets"), env=worker_env(), stderr=stderr_file(self))
        s = self.client.open_stream()
        submit_rgb(self.client, s, random_rgb(self.rng, 4, 4))
        r = collect(self.client, 1)[0]
        self.assertEqual(r.outcome, "failed")
        self.assertIn("without answering", r.error)

    def test_stray_prints_go_to_stderr_and_never_into_the_protocol(self):
        err = stderr_file(self)
        index, _, proc = spawn_script(self.client, python_worker("probe_handlers:report_init", "--init", "probe_handlers:init"), stderr=err)
        self.addCleanup(reap, proc)
        execute(proc, "ready-1", "tessera.ready")
        lines = read_protocol(proc, "ready-1")
        # numpy_worker op 5 prints in the handler; probe_handlers printed at import and in init.
        s = self.client.open_stream()
        submit_rgb(self.client, s, random_rgb(self.rng, 4, 4))
        r = collect(self.client, 1)[0]
        self.assertEqual(r.outcome, "completed", r.error)
        self.assertEqual(int(r.output[0]), 7, "--init ran before ready")
        execute(proc, "stats-1", "print('a print inside a protocol script')\n")
        lines += read_protocol(proc, "stats-1")
        proc.stdin.close()
        rest = proc.stdout.read()
        self.assertEqual(reap(proc), 0)
        self.assertEqual(rest, b"", "nothing after the last answer")
        for line in lines:
            self.assertIn(b'"task"', line)
            self.assertNotIn(b"print", line)
        with open(err.name, "rb") as f:
            stderr = f.read()
        self.assertIn(b"a print at import time must not reach the protocol", stderr)
        self.assertIn(b"printing during init", stderr)
        self.assertIn(b"a print inside a protocol script", stderr)

    def test_stray_print_in_handler_keeps_the_protocol_intact(self):
        err = stderr_file(self)
        index, _, proc = spawn_script(self.client, python_worker("numpy_worker:handler"), stderr=err)
        self.addCleanup(reap, proc)
        s = self.client.open_stream()
        for _ in range(5):
            submit_rgb(self.client, s, random_rgb(self.rng, 4, 4), op=5)
        got = collect(self.client, 5)
        self.assertEqual([r.outcome for r in got], ["completed"] * 5)
        # The counter is bumped just after the answer is pushed: ask until it caught up.
        for attempt in range(50):
            execute(proc, f"stats-{attempt}", "tessera.stats")
            lines = read_protocol(proc, f"stats-{attempt}")
            done = json.loads(lines[-1])
            self.assertEqual(done["responseType"], "COMPLETION")
            if done["outputs"]["published"] == 5:
                break
            time.sleep(0.02)
        self.assertEqual(done["outputs"]["published"], 5)
        proc.stdin.close()
        self.assertEqual(reap(proc), 0)
        with open(err.name, "rb") as f:
            self.assertEqual(f.read().count(b"a stray print from the handler"), 5)

    def test_malformed_request_lines_are_skipped(self):
        err = stderr_file(self)
        index, _, proc = spawn_script(self.client, python_worker("numpy_worker:handler"), stderr=err)
        self.addCleanup(reap, proc)
        proc.stdin.write(b"this is not json\n{\"task\": 1}\n\n{\"requestType\": \"EXECUTE\"}\n[1,2]\n")
        proc.stdin.flush()
        execute(proc, "stats-3", "tessera.stats")
        lines = read_protocol(proc, "stats-3")
        done = json.loads(lines[-1])
        self.assertEqual(done["responseType"], "COMPLETION", done)
        self.assertGreaterEqual(done["outputs"]["bad_request_lines"], 4)
        s = self.client.open_stream()
        submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=1)
        self.assertEqual(collect(self.client, 1)[0].outcome, "completed")
        proc.stdin.close()
        self.assertEqual(reap(proc), 0)

    def test_init_script_runs_before_ready_and_is_removed(self):
        script = tempfile.NamedTemporaryFile("w", prefix=f"tessera-init-{os.getpid()}-", suffix=".py", delete=False)
        script.write("greeting = 42\nprint('init script ran')\n")
        script.close()
        self.addCleanup(lambda: os.path.exists(script.name) and os.unlink(script.name))
        self.client.start_unsupervised_pool(python_worker("probe_handlers:report_init"), env=worker_env(APPOSE_INIT_SCRIPT=script.name),
                               stderr=stderr_file(self))
        self.assertFalse(os.path.exists(script.name), "Appose convention: the init script is deleted after it ran")
        s = self.client.open_stream()
        submit_rgb(self.client, s, random_rgb(self.rng, 4, 4))
        r = collect(self.client, 1)[0]
        self.assertEqual(r.outcome, "completed", r.error)
        self.assertEqual(int(r.output[1]), 42)

    def test_failing_init_is_reported_and_the_process_exits_non_zero(self):
        err = stderr_file(self)
        with self.assertRaises(WorkerStartError) as ctx:
            self.client.start_unsupervised_pool(python_worker("probe_handlers:report_init", "--init", "probe_handlers:init_fails"),
                                   env=worker_env(), stderr=err, ready_timeout=30)
        self.assertIn("exit code 2", str(ctx.exception))
        with open(err.name, "rb") as f:
            self.assertIn(b"model weights are missing (probe)", f.read())
        with self.assertRaises(WorkerStartError):
            self.client.start_unsupervised_pool(python_worker("no_such_module_here:handler"), env=worker_env(), stderr=err,
                                                ready_timeout=30)

    def test_kill_9_mid_tile_loses_nothing_and_returns_the_blocks(self):
        idx = self.client.start_unsupervised_pool(python_worker("probe_handlers:sleepy", "--max-batch", "4"), count=2,
                                     env=worker_env(), stderr=stderr_file(self))
        victim = self.client.worker_process(idx[0])
        victim_slot = [w["slot"] for w in self.client.workers() if w["index"] == idx[0]][0]
        s = self.client.open_stream(ordered=True, max_in_flight=128)
        n = 60
        got = []
        for i in range(n):
            submit_rgb(self.client, s, random_rgb(self.rng, 16, 16), op=20)  # 20 ms per tile
            got += self.client.poll(64, 0.0)
            if i == 20:
                self.assertTrue(wait_until(lambda: self.client.workers()[idx[0]]["in_flight"] > 0, 10))
                os.kill(victim.pid, signal.SIGKILL)
        got += collect(self.client, n - len(got), timeout=60)
        self.assertEqual(victim.wait(10), -signal.SIGKILL)
        self.assertEqual(len(got), n)
        seqs = [r.seq for r in got]
        self.assertEqual(seqs, list(range(n)), "exactly one outcome per tile, in order")
        for r in got:
            self.assertEqual(r.outcome, "completed", r.error)  # one retry on the survivor
            self.assertEqual(int(r.output[0]), r.seq % 251)
        self.assertEqual(self.client.held_blocks(victim_slot), 0, "the dead worker's blocks were reclaimed")
        del got, r
        self.assertEqual(self.client.held_blocks(), 0)


if __name__ == "__main__":
    unittest.main()
