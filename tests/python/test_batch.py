"""Batch handlers through real worker processes (`python3 -m tessera.worker --batch N`):
assembly and publication, uneven batches, mixed shapes, the partial-batch deadline,
per-tile failures and exceptions inside a batch; and the Batcher in-process."""

import os
import threading
import time
import unittest

import numpy as np

import tessera
from tessera_test_support import collect, python_worker, small_client, stderr_file, submit_rgb, worker_env


def rgb(seed, h, w, c=3):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


class BatchWorkerTest(unittest.TestCase):
    def start(self, batch, max_wait, handler="batch_handlers:report"):
        self.client = small_client(ring_capacity=128, worker_window=128, classes=[(4096, 1024), (65536, 512)])
        self.addCleanup(self.client.close)
        self.err = stderr_file(self)
        self.client.start_unsupervised_pool(python_worker(handler, "--batch", str(batch), "--max-wait", str(max_wait)),
                                            count=1, env=worker_env(), stderr=self.err)

    def run_tiles(self, specs, ordered=True):
        """specs: (h, w, op) per tile; returns (inputs, results in delivery order)."""
        s = self.client.open_stream(ordered=ordered, max_in_flight=256)
        inputs = []
        for i, (h, w, op) in enumerate(specs):
            a = rgb(i, h, w)
            inputs.append(a)
            submit_rgb(self.client, s, a, op=op, x=i)
        got = collect(self.client, len(specs), timeout=60)
        self.assertEqual(len(got), len(specs), "results missing")
        return inputs, got

    def test_outputs_land_in_their_tiles_in_order_with_uneven_batches(self):
        self.start(batch=32, max_wait=0.2)
        inputs, got = self.run_tiles([(16, 16, 0)] * 70)
        sizes = []
        for i, r in enumerate(got):
            self.assertEqual(r.seq, i, "ordered stream out of order")
            self.assertEqual(r.outcome, "completed", r.error)
            x, total, n, h, _ = r.output.tolist()
            self.assertEqual(x, i, "a batch slice went to another tile")
            self.assertEqual(total, int(inputs[i].sum()))
            self.assertLessEqual(n, 32)
            sizes.append(n)
        self.assertEqual(max(sizes), 32, f"no full batch formed: {sorted(set(sizes))}")
        self.assertIn(70 % 32, sizes, "the last, uneven batch is missing")

    def test_mixed_shapes_are_split_into_uniform_batches(self):
        self.start(batch=8, max_wait=0.1)
        shapes = [(16, 16), (24, 16), (8, 40)]
        specs = [(*shapes[i % 3], 0) for i in range(48)]
        inputs, got = self.run_tiles(specs)
        for i, r in enumerate(got):
            self.assertEqual(r.outcome, "completed", r.error)
            x, total, n, h, _ = r.output.tolist()
            self.assertEqual((x, total, h), (i, int(inputs[i].sum()), inputs[i].shape[0]))
            self.assertLessEqual(n, 8)

    def test_partial_batch_goes_after_max_wait(self):
        self.start(batch=32, max_wait=0.6)
        s = self.client.open_stream(ordered=True)
        t0 = time.monotonic()
        for i in range(3):
            submit_rgb(self.client, s, rgb(i, 8, 8), x=i)
        got = collect(self.client, 3, timeout=30)
        elapsed = time.monotonic() - t0
        self.assertEqual([r.outcome for r in got], ["completed"] * 3, [r.error for r in got])
        self.assertEqual([r.output[2] for r in got], [3, 3, 3], "the three tiles were not one partial batch")
        self.assertGreaterEqual(elapsed, 0.5, "a partial batch ran before max_wait")
        self.assertLess(elapsed, 20, "a partial batch was held far beyond max_wait")

    def test_handler_fails_single_tiles_and_publishes_the_rest(self):
        self.start(batch=16, max_wait=0.05)
        inputs, got = self.run_tiles([(8, 8, 1)] * 30)
        for i, r in enumerate(got):
            if i % 3 == 0:
                self.assertEqual(r.outcome, "failed")
                self.assertIn(f"x={i} is a multiple of 3", r.error)
            else:
                self.assertEqual(r.outcome, "completed", r.error)
                self.assertEqual(r.output[:2].tolist(), [i, int(inputs[i].sum())])

    def test_exception_fails_every_tile_of_its_batch_with_the_traceback(self):
        self.start(batch=16, max_wait=0.05)
        # The raising batch has its own shape; the worker carries on with the others.
        specs = [(8, 8, 0)] * 5 + [(12, 12, 2)] * 4 + [(8, 8, 0)] * 5
        inputs, got = self.run_tiles(specs)
        for i, r in enumerate(got):
            if specs[i][2] == 2:
                self.assertEqual(r.outcome, "failed")
                self.assertIn("Traceback", r.error)
                self.assertIn("op 2 raises", r.error)
            else:
                self.assertEqual(r.outcome, "completed", r.error)
                self.assertEqual(r.output[0], i)

    def test_a_handler_without_assembly_answers_tiles_itself(self):
        self.start(batch=8, max_wait=0.05, handler="batch_handlers:no_assembly")
        inputs, got = self.run_tiles([(8, 8, 0)] * 20)
        for i, r in enumerate(got):
            self.assertEqual(r.outcome, "completed", r.error)
            self.assertEqual(r.output[:2].tolist(), [i, int(inputs[i].sum())])


class DevicesTest(unittest.TestCase):
    """A device list starts one worker per device, each with its own CUDA_VISIBLE_DEVICES
    (real worker processes report the variable they see)."""

    def seen_devices(self, client, n_workers):
        s = client.open_stream(ordered=False, max_in_flight=256)
        seen = set()
        end = time.monotonic() + 60
        while len(seen) < n_workers and time.monotonic() < end:
            for i in range(32):
                submit_rgb(client, s, rgb(i, 4, 4), x=i)
            for r in collect(client, 32, timeout=30):
                self.assertEqual(r.outcome, "completed", r.error)
                seen.add(bytes(r.output).decode())
        return seen

    def test_supervised_pool_gives_each_worker_its_device(self):
        client = small_client()
        self.addCleanup(client.close)
        client.start_supervised_pool(python_worker("batch_handlers:cuda_visible_devices", "--batch", "4"),
                                     count=1, devices=["0", "1"],
                                     env=worker_env(CUDA_VISIBLE_DEVICES="9"))
        self.assertEqual(len(client.workers()), 2, "one worker per device, whatever count says")
        self.assertEqual(self.seen_devices(client, 2), {"0", "1"})

    def test_python_pool_gives_each_worker_its_device(self):
        client = small_client()
        self.addCleanup(client.close)
        err = stderr_file(self)
        started = client.start_unsupervised_pool(python_worker("batch_handlers:cuda_visible_devices", "--batch", "4"),
                                    devices=["3", "GPU-7"], env=worker_env(), stderr=err)
        self.assertEqual(len(started), 2)
        self.assertEqual(self.seen_devices(client, 2), {"3", "GPU-7"})

    def test_without_devices_the_variable_is_not_set(self):
        client = small_client()
        self.addCleanup(client.close)
        client.start_supervised_pool(python_worker("batch_handlers:cuda_visible_devices", "--batch", "4"),
                                     count=1, env=worker_env())
        self.assertEqual(self.seen_devices(client, 1), {"-"})


class InProcessBatcherTest(unittest.TestCase):
    """The Batcher over a worker attached in this process: the buffer is reused and a
    stop runs the tiles still held."""

    def setUp(self):
        self.client = small_client(ring_capacity=128, worker_window=128)
        self.addCleanup(self.client.close)
        index, slot, fd = self.client.add_external_worker("thread")
        os.environ["TESSERA_ARENA_FD"] = str(fd)
        os.environ["TESSERA_SLOT"] = str(slot)
        self.worker = tessera.Worker.from_env()
        self.client.set_worker_pid(index, os.getpid())
        self.addCleanup(self.worker.close)

    def test_buffer_is_reused_and_stop_flushes_held_tiles(self):
        s = self.client.open_stream(ordered=True)
        for i in range(10):
            submit_rgb(self.client, s, rgb(i, 8, 8), x=i)
        seen = []

        def handler(batch, tiles):
            seen.append((batch.__array_interface__["data"][0], len(tiles)))
            return batch.reshape(len(tiles), -1)[:, :4]

        b = tessera.Batcher(self.worker._w, max_batch=4, max_wait=30.0, timeout=0.05)
        end = time.monotonic() + 10
        while b.held + b.tiles_run < 10 and time.monotonic() < end:
            b.step(handler)
        self.assertEqual(b.tiles_run, 8, "only full batches may run before max_wait")
        self.assertEqual(b.held, 2)
        self.worker.request_stop()
        self.assertFalse(b.step(handler))
        self.assertEqual(b.tiles_run, 10, "a stop must run the tiles still held")
        self.assertEqual(len({addr for addr, _ in seen}), 1, "the assembly buffer was not reused")
        self.assertEqual([n for _, n in seen], [4, 4, 2])
        got = collect(self.client, 10)
        self.assertEqual([r.outcome for r in got], ["completed"] * 10)
        for i, r in enumerate(got):
            np.testing.assert_array_equal(r.output, rgb(i, 8, 8).reshape(-1)[:4])

    def test_an_interrupt_in_the_handler_fails_its_batch_and_is_raised_from_step(self):
        s = self.client.open_stream(ordered=True)
        for i in range(8):
            submit_rgb(self.client, s, rgb(i, 8, 8), x=i)
        calls = []

        def handler(batch, tiles):
            calls.append(len(tiles))
            if len(calls) == 1:
                raise KeyboardInterrupt
            return batch.reshape(len(tiles), -1)[:, :4]

        b = tessera.Batcher(self.worker._w, max_batch=4, max_wait=30.0, timeout=0.05)
        with self.assertRaises(KeyboardInterrupt):
            end = time.monotonic() + 10
            while b.tiles_run < 8 and time.monotonic() < end:
                b.step(handler)
        self.assertEqual(calls, [4], "the handler ran again after it raised KeyboardInterrupt in the same step")
        end = time.monotonic() + 10
        while b.tiles_run < 8 and time.monotonic() < end:  # the loop goes on afterwards
            b.step(handler)
        self.assertEqual(b.tiles_run, 8)
        got = collect(self.client, 8)
        self.assertEqual(len(got), 8)
        failed = [r for r in got if r.outcome == "failed"]
        self.assertEqual(len(failed), 4)
        for r in failed:
            self.assertIn("KeyboardInterrupt", r.error)
        for r in got:
            if r.outcome == "completed":
                np.testing.assert_array_equal(r.output, rgb(r.x, 8, 8).reshape(-1)[:4])

    def take(self, n):
        tiles, end = [], time.monotonic() + 10
        while len(tiles) < n and time.monotonic() < end:
            tiles += self.worker._w.take(n - len(tiles), 0.05) or []
        self.assertEqual(len(tiles), n, "tiles not delivered")
        return tiles

    def test_gather_and_publish_batch_copy_each_tile_and_refuse_bad_arguments(self):
        s = self.client.open_stream(ordered=True)
        imgs = [rgb(i, 8, 8) for i in range(4)]
        for i, a in enumerate(imgs):
            submit_rgb(self.client, s, a, x=i)
        tiles = self.take(4)
        nw = self.worker._w
        dest = np.full((5, 8, 8, 3), 7, np.uint8)
        self.assertEqual(nw.gather(tiles, dest), 4)
        np.testing.assert_array_equal(dest[:4], np.stack(imgs))
        self.assertTrue((dest[4] == 7).all(), "gather wrote past the tiles")
        with self.assertRaisesRegex(ValueError, "dest has shape"):
            nw.gather(tiles, np.zeros((3, 8, 8, 3), np.uint8))
        with self.assertRaisesRegex(TypeError, "uint8"):
            nw.gather(tiles, np.zeros((4, 8, 8, 3), np.float32))
        with self.assertRaisesRegex(ValueError, "C-contiguous"):
            nw.gather(tiles, np.zeros((4, 8, 8, 3), np.uint8, order="F"))
        with self.assertRaisesRegex(ValueError, "for 4 tiles"):
            nw.publish_batch(tiles, np.zeros((3, 2), np.int16))
        tiles[1].fail("answered by the handler")
        # A slice no arena block can hold fails its tile only.
        self.assertEqual(nw.publish_batch(tiles[2:3], np.zeros((1, 1024, 1024), np.uint8)), 0)
        out = np.stack(imgs)[:, :, :, 0].astype(np.int16) * 3  # (4, 8, 8)
        self.assertEqual(nw.publish_batch(tiles, out), 2, "only the two still-pending tiles are published")
        with self.assertRaisesRegex(ValueError, "already answered"):
            nw.gather(tiles, dest)
        got = collect(self.client, 4)
        self.assertEqual([r.outcome for r in got], ["completed", "failed", "failed", "completed"])
        self.assertIn("does not fit", got[2].error)
        for i in (0, 3):
            np.testing.assert_array_equal(got[i].output, out[i])

    def test_answers_under_held_wakeups_reach_the_client(self):
        s = self.client.open_stream(ordered=True)
        for i in range(3):
            submit_rgb(self.client, s, rgb(i, 8, 8), x=i)
        tiles = self.take(3)
        nw = self.worker._w
        nw.hold_wakeups()
        nw.hold_wakeups()
        self.assertEqual(nw.publish_batch(tiles, np.arange(3, dtype=np.int32)), 3)
        nw.release_wakeups()
        nw.release_wakeups()
        nw.release_wakeups()  # one release too many is harmless
        got = collect(self.client, 3)
        self.assertEqual([int(r.output[0]) for r in got], [0, 1, 2])


if __name__ == "__main__":
    unittest.main()
