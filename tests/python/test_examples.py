"""Output correctness of the example Python workers, run as real worker processes
(`python3 -m tessera.worker`): the NumPy mask/mean against references computed here,
the PyTorch net against the same net run in this process."""

import os
import sys
import unittest

import numpy as np

from tessera_test_support import (EXAMPLES_DIR, collect, python_worker, random_rgb, small_client, stderr_file, submit_rgb,
                                  worker_env)

sys.path.insert(0, EXAMPLES_DIR)
import numpy_worker  # noqa: E402


class NumpyWorkerTest(unittest.TestCase):
    def setUp(self):
        self.client = small_client()
        self.addCleanup(self.client.close)
        self.err = stderr_file(self)
        self.client.start_unsupervised_pool(python_worker("numpy_worker:handler"), count=2, env=worker_env(), stderr=self.err)
        self.rng = np.random.default_rng(1234)

    def test_mask_equals_the_reference_for_every_tile_in_order(self):
        s = self.client.open_stream(ordered=True, max_in_flight=64)
        tiles = []
        got = []
        for i in range(120):
            h, w = [(16, 16), (32, 48), (64, 64), (7, 5)][i % 4]
            rgb = random_rgb(self.rng, h, w)
            tiles.append(rgb)
            submit_rgb(self.client, s, rgb, op=0, x=i, tag=1000 + i)
            got += self.client.poll(64, 0.0)
        got += collect(self.client, len(tiles) - len(got))
        self.assertEqual(len(got), len(tiles))
        for i, r in enumerate(got):
            self.assertEqual(r.seq, i, "ordered stream delivered out of order")
            self.assertEqual(r.outcome, "completed", r.error)
            self.assertEqual((r.x, r.tag), (i, 1000 + i))
            np.testing.assert_array_equal(r.output, numpy_worker.reference_mask(tiles[i]))
        used = {w["index"] for w in self.client.workers() if w["completed"] > 0}
        self.assertEqual(len(used), 2, "both workers must have taken tiles")

    def test_mean_equals_numpy_mean(self):
        s = self.client.open_stream(ordered=True)
        tiles = [random_rgb(self.rng, 32, 32) for _ in range(20)]
        for t in tiles:
            submit_rgb(self.client, s, t, op=1)
        got = collect(self.client, len(tiles))
        self.assertEqual(len(got), len(tiles))
        for t, r in zip(tiles, got):
            self.assertEqual(r.outcome, "completed", r.error)
            self.assertEqual(r.output.dtype, np.float32)
            self.assertEqual(r.output.shape, (1,))
            self.assertEqual(r.output[0], np.float32(t.mean()))

    def test_wrong_input_fails_that_tile_only(self):
        s = self.client.open_stream(ordered=True)
        submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=0)
        submit_rgb(self.client, s, np.zeros((8, 8), np.float32), op=0)
        submit_rgb(self.client, s, random_rgb(self.rng, 8, 8), op=0)
        got = collect(self.client, 3)
        self.assertEqual([r.outcome for r in got], ["completed", "failed", "completed"])
        self.assertIn("mask needs uint8 (H, W, 3)", got[1].error)
        self.assertIn("ValueError", got[1].error)


class TorchWorkerTest(unittest.TestCase):
    def test_torch_mask_equals_the_same_net_in_process(self):
        import torch  # noqa: F401 - imported here: 1-2 s
        import torch_worker

        client = small_client()
        self.addCleanup(client.close)
        err = stderr_file(self)
        client.start_unsupervised_pool(python_worker("torch_worker:handler", "--init", "torch_worker:init"), count=1, env=worker_env(),
                                       stderr=err)
        rng = np.random.default_rng(99)
        net = torch_worker.build_net()
        s = client.open_stream(ordered=True)
        tiles = []
        for i in range(12):
            rgb = random_rgb(rng, 32, 32)
            rgb[:, :16] //= 3  # darker half: the net must find tissue there
            tiles.append(rgb)
            submit_rgb(client, s, rgb)
        got = collect(client, len(tiles), timeout=60)
        self.assertEqual(len(got), len(tiles))
        saw_tissue = saw_glass = False
        for rgb, r in zip(tiles, got):
            self.assertEqual(r.outcome, "completed", r.error)
            expected = torch_worker.infer(net, rgb).numpy()
            np.testing.assert_array_equal(r.output, expected)
            saw_tissue |= bool((r.output == 255).any())
            saw_glass |= bool((r.output == 0).any())
        self.assertTrue(saw_tissue and saw_glass, "a degenerate net would make this test meaningless")


if __name__ == "__main__":
    unittest.main()
