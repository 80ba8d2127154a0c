"""The Python client against the C++ example worker (tessera-tissue-worker):
correct masks in submission order, zero-copy input blocks, failures, epochs,
cancellation, statistics and clear errors at the call."""

import os
import time
import unittest

import numpy as np

import tessera
from tessera_test_support import BIN_DIR, collect, random_rgb, small_client, stderr_file, submit_rgb, worker_env

WORKER = os.path.join(BIN_DIR, "tessera-tissue-worker")


def reference_mask(rgb, threshold=200):
    return np.where(rgb.astype(np.uint16).sum(axis=2) < 3 * threshold, 255, 0).astype(np.uint8)


@unittest.skipUnless(os.access(WORKER, os.X_OK), "tessera-tissue-worker is not built")
class ClientPipelineTest(unittest.TestCase):
    def setUp(self):
        self.client = small_client()
        self.addCleanup(self.client.close)
        self.client.start_unsupervised_pool([WORKER], count=2, env=worker_env(), stderr=stderr_file(self))
        self.rng = np.random.default_rng(3)

    def test_masks_come_back_correct_and_in_submission_order(self):
        s = self.client.open_stream(ordered=True, max_in_flight=64)
        tiles, got = [], []
        for i in range(300):
            rgb = random_rgb(self.rng, 16, 16)
            tiles.append(rgb)
            block = self.client.alloc(rgb.nbytes)
            view = block.array(np.uint8, rgb.shape)
            self.assertEqual(view.__array_interface__["data"][0], block.address, "input view is the block")
            view[...] = rgb
            self.assertEqual(self.client.submit(s, block, x=i, y=-i, level=1, tag=i * 7), i)
            self.assertFalse(block.valid)
            got += self.client.poll(64, 0.0)
        got += collect(self.client, len(tiles) - len(got))
        self.assertEqual(len(got), len(tiles))
        for i, r in enumerate(got):
            self.assertEqual(r.seq, i)
            self.assertEqual(r.outcome, "completed", r.error)
            self.assertEqual((r.x, r.y, r.level, r.tag, r.stream), (i, -i, 1, i * 7, s))
            self.assertGreater(r.latency_us, 0)
            np.testing.assert_array_equal(r.output, reference_mask(tiles[i]))
        st = self.client.stats(s)
        self.assertEqual(st["completed"], len(tiles))
        self.assertEqual(st["failed"], 0)
        self.assertGreater(st["p99_us"], 0)
        self.assertTrue(all(w["completed"] > 0 for w in self.client.workers()))
        del got, r
        self.assertEqual(self.client.held_blocks(), 0)

    def test_worker_error_and_bad_shape_fail_only_their_tiles(self):
        s = self.client.open_stream(ordered=True)
        submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=0)
        submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=3)
        submit_rgb(self.client, s, np.ones((4, 4), np.float32), op=0)
        submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=1)
        got = collect(self.client, 4)
        self.assertEqual([r.outcome for r in got], ["completed", "failed", "failed", "completed"])
        self.assertIn("op 3 always fails", got[1].error)
        self.assertIn("mask needs uint8", got[2].error)
        self.assertIsNone(got[1].output)

    def test_new_epoch_cancels_older_tiles(self):
        s = self.client.open_stream(max_in_flight=64)
        for _ in range(30):
            submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=4)  # slow, cancellable
        epoch = self.client.advance_epoch(s)
        for _ in range(5):
            submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=0)
        got = collect(self.client, 35)
        self.assertEqual(len(got), 35)
        old = [r for r in got if r.epoch < epoch]
        new = [r for r in got if r.epoch >= epoch]
        self.assertEqual(len(old), 30)
        self.assertTrue(all(r.outcome == "canceled" for r in old))
        self.assertEqual([r.outcome for r in new], ["completed"] * 5)

    def test_cancel_one_tile(self):
        s = self.client.open_stream(ordered=True)
        seqs = [submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=4) for _ in range(3)]
        self.client.cancel(s, seqs[2])
        got = collect(self.client, 3)
        self.assertEqual([r.seq for r in got], seqs)
        self.assertEqual(got[2].outcome, "canceled")

    def test_bad_calls_raise_clear_errors(self):
        s = self.client.open_stream()
        block = self.client.alloc(64)
        with self.assertRaisesRegex(ValueError, "needs 3000000 bytes"):
            block.array(np.uint8, (1000, 1000, 3))
        with self.assertRaises(tessera.TesseraError) as ctx:
            self.client.submit(s, block, dtype=np.uint8, shape=(1000, 1000, 3))
        self.assertEqual(ctx.exception.code, "invalid_argument")
        with self.assertRaises(tessera.TesseraError) as ctx:
            self.client.submit(9, block, dtype=np.uint8, shape=(4,))
        self.assertEqual(ctx.exception.code, "closed")
        with self.assertRaises(tessera.TesseraError):
            self.client.alloc(1 << 30, timeout=0.01)
        with self.assertRaises(TypeError):
            block.array(np.complex64, (2,))
        self.client.submit(s, block, dtype=np.uint8, shape=(4,), op=2)
        with self.assertRaises(ValueError):
            block.array(np.uint8, (4,))  # submitted blocks are gone
        self.assertEqual([r.outcome for r in collect(self.client, 1)], ["completed"])

    def test_submit_array_sends_each_slice_as_one_tile(self):
        s = self.client.open_stream(ordered=True, max_in_flight=64)
        tiles = np.stack([random_rgb(self.rng, 16, 16) for _ in range(40)])
        seqs = self.client.submit_array(s, tiles[:30], x=range(30), y=-5, level=1, tag=[7 * i for i in range(30)])
        self.assertEqual(seqs, list(range(30)))
        self.assertEqual(self.client.submit_array(s, tiles[30:, :, ::-1]), list(range(30, 40)),
                         "a non-contiguous view is copied as its values")
        got = collect(self.client, 40)
        for i, r in enumerate(got):
            self.assertEqual(r.outcome, "completed", r.error)
            self.assertEqual(r.seq, i)
            if i < 30:
                self.assertEqual((r.x, r.y, r.level, r.tag), (i, -5, 1, 7 * i))
                np.testing.assert_array_equal(r.output, reference_mask(tiles[i]))
            else:
                self.assertEqual((r.x, r.y, r.tag), (0, 0, 0))
                np.testing.assert_array_equal(r.output, reference_mask(tiles[i, :, ::-1]))

    def test_submit_array_refuses_bad_arguments_before_sending_anything(self):
        s = self.client.open_stream()
        tiles = np.zeros((3, 8, 8, 3), np.uint8)
        with self.assertRaisesRegex(ValueError, "x has 2 values for 3 tiles"):
            self.client.submit_array(s, tiles, x=[1, 2])
        with self.assertRaisesRegex(TypeError, "tag must be"):
            self.client.submit_array(s, tiles, tag="abc")
        with self.assertRaisesRegex(ValueError, r"\(n, \*tile_shape\)"):
            self.client.submit_array(s, np.zeros(5, np.uint8))
        with self.assertRaises(TypeError):
            self.client.submit_array(s, np.zeros((2, 4), np.complex64))
        with self.assertRaises(tessera.TesseraError) as ctx:
            self.client.submit_array(9, tiles)
        self.assertEqual(ctx.exception.code, "closed")
        with self.assertRaises(tessera.TesseraError):
            self.client.submit_array(s, np.zeros((2, 1 << 15, 1 << 15), np.uint8), timeout=0.01)
        self.assertEqual(self.client.submit_array(s, tiles[:0]), [])
        self.assertEqual(self.client.in_flight, 0, "a refused call sent a tile")
        self.assertEqual(self.client.held_blocks(), 0, "a refused call kept a block")


class SubmitArrayShortCountTest(unittest.TestCase):
    """submit_array against a worker in this process that answers only when told: when
    the arena runs out of blocks the call returns the tiles it sent, and the rest go
    once blocks are back."""

    def take(self, worker, n):
        tiles, end = [], time.monotonic() + 10
        while len(tiles) < n and time.monotonic() < end:
            tiles += worker._w.take(n - len(tiles), 0.05) or []
        self.assertEqual(len(tiles), n, "tiles not delivered")
        return tiles

    def test_a_full_class_gives_a_short_count_and_the_rest_goes_later(self):
        client = small_client(classes=[(4096, 4)], ring_capacity=64, worker_window=16)
        self.addCleanup(client.close)
        index, slot, fd = client.add_external_worker("thread")
        os.environ["TESSERA_ARENA_FD"] = str(fd)
        os.environ["TESSERA_SLOT"] = str(slot)
        worker = tessera.Worker.from_env()
        client.set_worker_pid(index, os.getpid())
        self.addCleanup(worker.close)
        s = client.open_stream(ordered=True)
        tiles = np.stack([random_rgb(np.random.default_rng(i), 8, 8) for i in range(6)])
        # Four blocks, part of them kept back for the worker's outputs: the call sends
        # what it can and returns, instead of failing or dropping the rest.
        sent = client.submit_array(s, tiles, x=range(6), timeout=0.05)
        k = len(sent)
        self.assertTrue(0 < k < 6, f"sent {k} of 6 with 4 blocks")
        self.assertEqual(sent, list(range(k)))
        with self.assertRaises(tessera.TesseraError) as ctx:
            client.submit_array(s, tiles[k:], x=range(k, 6), timeout=0.05)
        self.assertIn(f"tile 0 of {6 - k}", str(ctx.exception))
        self.assertEqual(client.in_flight, k, "a refused call sent a tile")
        for t in self.take(worker, k):
            t.cancel()
        self.assertEqual([r.outcome for r in collect(client, k)], ["canceled"] * k)
        rest, got = [], []
        while k + len(rest) < 6:  # the blocks came back: the rest goes, in as many calls as blocks allow
            more = client.submit_array(s, tiles[k + len(rest):], x=range(k + len(rest), 6), timeout=5)
            rest += more
            for t in self.take(worker, len(more)):
                t.publish(np.full(3, t.x, np.int16))
                # Consume each result at once, so its input and output blocks are free again.
                got += [(r.outcome, r.x, r.output.tolist()) for r in collect(client, 1)]
        self.assertEqual(rest, list(range(k, 6)))
        self.assertEqual(got, [("completed", x, [x] * 3) for x in range(k, 6)])


class SupervisedPoolTest(unittest.TestCase):
    """The broker's own supervisor runs Python workers: readiness, kill -9, restart."""

    def test_python_workers_under_the_supervisor_survive_a_kill(self):
        from tessera_test_support import python_worker, wait_until
        client = small_client()
        self.addCleanup(client.close)
        client.start_supervised_pool(python_worker("numpy_worker:handler"), count=2,
                                     env={k: os.environ[k] for k in ("PYTHONPATH", "LD_PRELOAD", "ASAN_OPTIONS", "TSAN_OPTIONS")
                                          if k in os.environ}, ready_timeout=60)
        rng = np.random.default_rng(11)
        s = client.open_stream(ordered=True, max_in_flight=64)
        tiles, got = [], []
        for i in range(200):
            rgb = random_rgb(rng, 16, 16)
            tiles.append(rgb)
            submit_rgb(client, s, rgb, op=0)
            if i == 50:
                client.kill_worker(0)
            got += client.poll(64, 0.0)
        got += collect(client, len(tiles) - len(got), timeout=60)
        self.assertEqual([r.seq for r in got], list(range(len(tiles))))
        for rgb, r in zip(tiles, got):
            self.assertEqual(r.outcome, "completed", r.error)
            np.testing.assert_array_equal(r.output, reference_mask(rgb))
        # The killed worker was restarted (the client processes pool events while polling).
        self.assertTrue(wait_until(lambda: client.poll(1, 0.01) == [] and client.workers()[0]["restarts"] >= 1
                                   and client.workers()[0]["alive"], 30), client.workers())


if __name__ == "__main__":
    unittest.main()
