"""Tessera inside an (Appose-style) Python worker that owns stdin/stdout: the tile
loop runs as a long-running task (tessera.appose.serve), tiles flow through shared
memory, progress flows through Appose UPDATE messages, CANCEL stops the loop."""

import json
import os
import select
import sys
import time
import unittest

import numpy as np

from tessera_test_support import EXAMPLES_DIR, HERE, PYTHON, collect, random_rgb, reap, small_client, spawn_script, stderr_file, submit_rgb

sys.path.insert(0, EXAMPLES_DIR)
import numpy_worker  # noqa: E402

SERVE_SCRIPT = """
import sys
sys.path.insert(0, examples_dir)
import tessera.appose
import numpy_worker
tessera.appose.serve(task, numpy_worker.handler, max_batch=8, timeout=0.05, update_every=0.0)
"""


class AposeHost:
    """The host side of the Appose protocol (what an Appose Service does)."""

    def __init__(self, proc):
        self.proc = proc
        self.buf = b""
        self.messages = []

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def execute(self, task, script, **inputs):
        self.send({"task": task, "requestType": "EXECUTE", "script": script, "inputs": inputs})

    def cancel(self, task):
        self.send({"task": task, "requestType": "CANCEL"})

    def read_until(self, pred, timeout=20.0):
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while time.monotonic() < end:
            for m in self.messages:
                if pred(m):
                    return m
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.buf += chunk
                while b"\n" in self.buf:
                    line, _, self.buf = self.buf.partition(b"\n")
                    self.messages.append(json.loads(line))  # any non-JSON line fails the test
        raise AssertionError(f"no matching message; got {self.messages}")


class AposeEmbeddedTest(unittest.TestCase):
    def test_tile_loop_runs_as_an_appose_task_with_progress_and_cancel(self):
        client = small_client()
        self.addCleanup(client.close)
        err = stderr_file(self)
        index, slot, proc = spawn_script(client, [PYTHON, os.path.join(HERE, "appose_worker.py")], stderr=err)
        self.addCleanup(reap, proc)
        host = AposeHost(proc)

        # An ordinary Appose task still works next to Tessera.
        host.execute("hello", "1 + 2")
        done = host.read_until(lambda m: m["task"] == "hello" and m["responseType"] == "COMPLETION")
        self.assertEqual(done["outputs"]["result"], 3)

        host.execute("tiles", SERVE_SCRIPT, examples_dir=EXAMPLES_DIR)
        host.read_until(lambda m: m["task"] == "tiles" and m["responseType"] == "LAUNCH")
        first = host.read_until(lambda m: m["task"] == "tiles" and m["responseType"] == "UPDATE")
        self.assertIn(f"slot {slot}", first["message"])

        rng = np.random.default_rng(5)
        s = client.open_stream(ordered=True)
        tiles = [random_rgb(rng, 24, 24) for _ in range(40)]
        for i, t in enumerate(tiles):
            submit_rgb(client, s, t, op=3 if i == 10 else 0)
        got = collect(client, len(tiles))
        self.assertEqual(len(got), len(tiles))
        for i, (t, r) in enumerate(zip(tiles, got)):
            if i == 10:
                self.assertEqual(r.outcome, "failed")
                self.assertIn("op 3 always fails", r.error)
                continue
            self.assertEqual(r.outcome, "completed", r.error)
            np.testing.assert_array_equal(r.output, numpy_worker.reference_mask(t))

        # Progress reached the host as Appose UPDATEs.
        progress = host.read_until(lambda m: m["task"] == "tiles" and m["responseType"] == "UPDATE"
                                   and m.get("current", 0) >= len(tiles))
        self.assertIn("tiles", progress["message"])

        host.cancel("tiles")
        host.read_until(lambda m: m["task"] == "tiles" and m["responseType"] == "CANCELATION")
        self.assertFalse(any(m["task"] == "tiles" and m["responseType"] in ("COMPLETION", "FAILURE")
                             for m in host.messages), "a canceled task reports exactly one terminal message")
        self.assertEqual(client.held_blocks(slot), 0)

        # The loop can be started again, then the worker exits when stdin closes.
        host.execute("tiles2", SERVE_SCRIPT, examples_dir=EXAMPLES_DIR)
        host.read_until(lambda m: m["task"] == "tiles2" and m["responseType"] == "UPDATE")
        submit_rgb(client, s, tiles[0], op=1)
        self.assertEqual(collect(client, 1)[0].outcome, "completed")
        proc.stdin.close()
        self.assertEqual(reap(proc, 20), 0)


if __name__ == "__main__":
    unittest.main()
