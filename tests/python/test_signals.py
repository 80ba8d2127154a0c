"""KeyboardInterrupt and SIGTERM stop a Python worker cleanly and return held blocks."""

import os
import signal
import unittest

import numpy as np

from tessera_test_support import (HERE, PYTHON, collect, python_worker, reap, small_client, spawn_script, stderr_file,
                                  wait_until, worker_env)


def stderr_text(f):
    with open(f.name, "rb") as fh:
        return fh.read().decode(errors="replace")


class SignalTest(unittest.TestCase):
    def setUp(self):
        self.client = small_client()
        self.addCleanup(self.client.close)
        self.err = stderr_file(self)

    def start_loop_worker(self):
        index, slot, proc = spawn_script(self.client, [PYTHON, os.path.join(HERE, "loop_worker.py")], stderr=self.err)
        self.addCleanup(reap, proc)
        self.assertTrue(wait_until(lambda: "ready" in stderr_text(self.err), 30), stderr_text(self.err))
        return index, slot, proc

    def submit_one(self, hold_ms):
        s = self.client.open_stream()
        block = self.client.alloc(16)
        block.array(np.uint8, (16,))
        return self.client.submit(s, block, op=hold_ms)

    def wait_handling(self):
        self.assertTrue(wait_until(lambda: "handling" in stderr_text(self.err), 20), stderr_text(self.err))

    def test_keyboard_interrupt_while_waiting_ends_the_loop(self):
        _, _, proc = self.start_loop_worker()
        proc.send_signal(signal.SIGINT)
        self.assertEqual(reap(proc, 20), 0, stderr_text(self.err))
        self.assertIn("stopped cleanly, pending=0", stderr_text(self.err))

    def test_keyboard_interrupt_mid_tile_answers_it_and_frees_its_output(self):
        index, slot, proc = self.start_loop_worker()
        self.submit_one(hold_ms=20000)
        self.wait_handling()
        self.assertEqual(self.client.held_blocks(slot), 1, "the output block is held while the handler runs")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(reap(proc, 20), 0, stderr_text(self.err))
        self.assertIn("stopped cleanly, pending=0", stderr_text(self.err))
        got = collect(self.client, 1, timeout=10)
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].outcome, "failed")
        self.assertIn("worker stopped before answering", got[0].error)
        # The worker gave everything back itself (its slot was not reclaimed as dead):
        # the output block was freed, the error text block went to the client.
        self.assertEqual(self.client.held_blocks(slot), 0)
        self.client.worker_died(index, "exited")
        self.assertEqual(collect(self.client, 1, timeout=0.5), [], "no second outcome for the tile")

    def test_sigterm_mid_tile_finishes_the_tile_then_stops(self):
        _, slot, proc = self.start_loop_worker()
        self.submit_one(hold_ms=500)
        self.wait_handling()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(reap(proc, 20), 0, stderr_text(self.err))
        got = collect(self.client, 1, timeout=10)
        self.assertEqual([r.outcome for r in got], ["completed"])
        self.assertIn("stopped cleanly, pending=0", stderr_text(self.err))

    def test_sigterm_stops_a_standalone_worker_cleanly(self):
        index = self.client.start_unsupervised_pool(python_worker("probe_handlers:sleepy"), env=worker_env(),
                                                    stderr=self.err)[0]
        proc = self.client.worker_process(index)
        slot = self.client.workers()[index]["slot"]
        self.submit_one(hold_ms=500)
        self.assertTrue(wait_until(lambda: self.client.workers()[index]["in_flight"] > 0, 20))
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(reap(proc, 20), 0, stderr_text(self.err))
        got = collect(self.client, 1, timeout=10)
        self.assertEqual(len(got), 1, "exactly one outcome")
        # Taken before the signal: completed. Still queued: failed when the exit is noticed.
        self.assertIn(got[0].outcome, ("completed", "failed"))
        if got[0].outcome == "failed":
            self.assertRegex(got[0].error, "worker stopped|exit code 0")
        self.assertEqual(collect(self.client, 1, timeout=0.5), [], "no second outcome for the tile")
        self.assertEqual(self.client.held_blocks(slot), 0)


if __name__ == "__main__":
    unittest.main()
