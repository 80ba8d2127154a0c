"""tessera.torch on the CPU: the batched torch example through a real worker process
equals the per-tile net; to_device/publish match plain torch; pin_arena() is a clean
no-op without CUDA, registers a mapping once where CUDA is present (a stand-in cudart
records the calls), and unregisters it before the mapping goes."""

import os
import threading
import time
import unittest
from unittest import mock

import numpy as np
import torch

import tessera
from tessera import torch as tt
from tessera_test_support import EXAMPLES_DIR, collect, python_worker, random_rgb, small_client, stderr_file, submit_rgb, worker_env

import sys

sys.path.insert(0, EXAMPLES_DIR)
import torch_worker  # noqa: E402


class TorchBatchWorkerTest(unittest.TestCase):
    def test_batched_torch_example_equals_the_per_tile_net(self):
        client = small_client(ring_capacity=128, worker_window=64)
        self.addCleanup(client.close)
        err = stderr_file(self)
        client.start_unsupervised_pool(python_worker("torch_worker:handle_batch", "--batch", "8", "--max-wait", "0.05",
                                        "--init", "torch_worker:init"), count=1, env=worker_env(), stderr=err)
        rng = np.random.default_rng(7)
        net = torch_worker.build_net()
        s = client.open_stream(ordered=True, max_in_flight=64)
        tiles = []
        for i in range(27):  # uneven: 8 + 8 + 8 + 3 per shape at most
            h, w = [(32, 32), (16, 48)][i % 2]
            rgb = random_rgb(rng, h, w)
            rgb[:, : w // 2] //= 3
            tiles.append(rgb)
            submit_rgb(client, s, rgb, x=i)
        got = collect(client, len(tiles), timeout=90)
        self.assertEqual(len(got), len(tiles))
        saw_tissue = saw_glass = False
        for i, (rgb, r) in enumerate(zip(tiles, got)):
            self.assertEqual((r.outcome, r.x), ("completed", i), r.error)
            # Equal to the per-tile mask; only a logit within float rounding of the
            # threshold may round the other way in another convolution code path.
            differ = r.output != torch_worker.infer(net, rgb).numpy()
            logit = torch_worker.logits(net, rgb)
            self.assertFalse((differ & (np.abs(logit) > 1e-4)).any(), f"tile {i}: masks differ")
            self.assertLessEqual(int(differ.sum()), 2, f"tile {i}: too many pixels on the threshold")
            saw_tissue |= bool((r.output == 255).any())
            saw_glass |= bool((r.output == 0).any())
        self.assertTrue(saw_tissue and saw_glass, "a degenerate net would make this test meaningless")

    def test_wrong_input_fails_its_batch_only(self):
        client = small_client()
        self.addCleanup(client.close)
        err = stderr_file(self)
        client.start_unsupervised_pool(python_worker("torch_worker:handle_batch", "--batch", "4", "--max-wait", "0.01",
                                        "--init", "torch_worker:init"), count=1, env=worker_env(), stderr=err)
        s = client.open_stream(ordered=True)
        submit_rgb(client, s, random_rgb(np.random.default_rng(1), 8, 8))
        submit_rgb(client, s, np.zeros((8, 8), np.float32))
        got = collect(client, 2, timeout=60)
        self.assertEqual([r.outcome for r in got], ["completed", "failed"])
        self.assertIn("torch mask needs uint8 (H, W, 3)", got[1].error)


class FakeCudart:
    """Stands in for torch.cuda.cudart(): records (un)registrations, returns cudaSuccess."""

    def __init__(self):
        self.calls = []

    def cudaHostRegister(self, ptr, size, flags):
        self.calls.append(("register", ptr, size, flags))
        return 0

    def cudaHostUnregister(self, ptr):
        self.calls.append(("unregister", ptr))
        return 0


class InProcessTorchTest(unittest.TestCase):
    def setUp(self):
        self.client = small_client()
        self.addCleanup(self.client.close)
        self.stream = self.client.open_stream(ordered=True)

    def attach(self):
        index, slot, fd = self.client.add_external_worker("thread")
        os.environ["TESSERA_ARENA_FD"] = str(fd)
        os.environ["TESSERA_SLOT"] = str(slot)
        w = tessera.Worker.from_env()
        self.client.set_worker_pid(index, os.getpid())
        return w

    def take(self, w, n):
        got = []
        end = time.monotonic() + 10
        while len(got) < n and time.monotonic() < end:
            got += w.take(n - len(got), 0.1)
        self.assertEqual(len(got), n)
        return got

    def test_pin_arena_is_a_clean_noop_without_cuda(self):
        self.assertFalse(torch.cuda.is_available(), "this test is for a machine without CUDA")
        w = self.attach()
        self.addCleanup(w.close)
        submit_rgb(self.client, self.stream, random_rgb(np.random.default_rng(2), 8, 8))
        (tile,) = self.take(w, 1)
        self.assertFalse(tt.pin_arena(w))
        self.assertFalse(tt.pin_arena(tile))  # a second call: still nothing, no error
        self.assertEqual(tt.pinned_arenas(), {})
        x = tt.to_device([tile], "cpu", dtype=torch.float32)  # the CPU path never needs the pin
        self.assertEqual(tuple(x.shape), (1, 3, 8, 8))
        tile.publish(np.zeros(1, np.uint8))
        self.assertEqual(collect(self.client, 1)[0].outcome, "completed")

    def test_pin_registers_once_and_unregisters_before_the_mapping_goes(self):
        fake = FakeCudart()
        w = self.attach()
        native = w._w
        addr, size = native.arena_address, native.arena_size
        with mock.patch.object(torch.cuda, "is_available", return_value=True), \
                mock.patch.object(torch.cuda, "cudart", return_value=fake), \
                mock.patch.object(torch.cuda, "synchronize", return_value=None):
            self.assertTrue(tt.pin_arena(w))
            self.assertTrue(tt.pin_arena(w))  # never twice
            self.assertEqual(fake.calls, [("register", addr, size, 0)])
            self.assertEqual(tt.pinned_arenas(), {addr: size})
            w.close()
            del w, native  # the last reference: the mapping goes now
            import gc
            gc.collect()
            self.assertEqual(fake.calls[-1], ("unregister", addr), "the registration outlived the mapping")
            self.assertEqual(tt.pinned_arenas(), {})

    def test_to_device_and_publish_match_plain_torch_on_cpu(self):
        w = self.attach()
        self.addCleanup(w.close)
        rng = np.random.default_rng(3)
        imgs = [random_rgb(rng, 16, 24) for _ in range(5)]
        for i, a in enumerate(imgs):
            submit_rgb(self.client, self.stream, a, x=i)
        tiles = self.take(w, 5)
        x = tt.to_device(tiles, "cpu", dtype=torch.float32)
        ref = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
        self.assertTrue(torch.equal(x, ref))
        nhwc = tt.to_device(tiles, "cpu", dtype=None, layout="NHWC")
        self.assertEqual(nhwc.dtype, torch.uint8)
        self.assertTrue(torch.equal(nhwc, torch.from_numpy(np.stack(imgs))))
        tiles[1].fail("answered by the handler")
        self.assertEqual(tt.publish(tiles, x[:, 0].to(torch.int16)), 4)
        got = collect(self.client, 5)
        self.assertEqual([r.outcome for r in got], ["completed", "failed", "completed", "completed", "completed"])
        for i, r in enumerate(got):
            if i != 1:
                np.testing.assert_array_equal(r.output, imgs[i][:, :, 0].astype(np.int16))

    def test_to_device_refuses_a_batch_of_mixed_shapes_and_answers_nothing(self):
        w = self.attach()
        self.addCleanup(w.close)
        rng = np.random.default_rng(4)
        submit_rgb(self.client, self.stream, random_rgb(rng, 16, 24), x=0)
        submit_rgb(self.client, self.stream, random_rgb(rng, 24, 16), x=1)
        tiles = self.take(w, 2)
        with self.assertRaisesRegex(ValueError, r"to_device: .*tile 1 is uint8\(24, 16, 3\)"):
            tt.to_device(tiles, "cpu", dtype=torch.float32)
        self.assertTrue(all(t.pending for t in tiles), "a refused batch answered a tile")
        for t in tiles:
            t.fail("done")
        self.assertEqual([r.outcome for r in collect(self.client, 2)], ["failed", "failed"])


if __name__ == "__main__":
    unittest.main()
