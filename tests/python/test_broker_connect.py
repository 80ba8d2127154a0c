"""A Python client of a standalone `tessera-broker --listen` (another process)."""
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import numpy as np

import tessera

BIN = os.environ.get("TESSERA_BIN_DIR", "")


class BrokerConnectTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tessera-test-")
        self.sock = os.path.join(self.dir, "broker.sock")
        self.broker = subprocess.Popen([os.path.join(BIN, "tessera-broker"), "--listen", self.sock, "-n", "2",
                                        "--log-level", "warn"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.broker.stdout.readline().decode()
        self.assertIn("listening", line)

    def tearDown(self):
        self.broker.terminate()
        try:
            self.assertEqual(self.broker.wait(timeout=20), 0)
        finally:
            if self.broker.poll() is None:
                self.broker.kill()
                self.broker.wait()
            shutil.rmtree(self.dir, ignore_errors=True)

    def test_masks_through_the_brokers_workers(self):
        c = tessera.Client.connect(self.sock)
        s = c.open_stream(ordered=True, max_in_flight=64)
        rng = np.random.default_rng(7)
        tiles = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(200)]
        got = []
        for i, t in enumerate(tiles):
            b = c.alloc(t.nbytes)
            b.array(np.uint8, t.shape)[...] = t
            c.submit(s, b, dtype=np.uint8, shape=t.shape, x=i)
            got.extend(c.poll(max=64, timeout=0))
        deadline = time.monotonic() + 30
        while len(got) < len(tiles) and time.monotonic() < deadline:
            got.extend(c.poll(max=64, timeout=0.05))
        self.assertEqual(len(got), len(tiles))
        for i, r in enumerate(got):
            self.assertEqual(r.seq, i)
            self.assertEqual(r.outcome, "completed", r.error)
            expected = np.where(tiles[i].astype(np.int32).sum(axis=2) < 600, 255, 0).astype(np.uint8)
            np.testing.assert_array_equal(r.output, expected)

    def test_connect_without_a_broker_raises(self):
        with self.assertRaises(Exception) as ctx:
            tessera.Client.connect(os.path.join(self.dir, "nobody.sock"), timeout=1.0)
        self.assertIn("no broker", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
