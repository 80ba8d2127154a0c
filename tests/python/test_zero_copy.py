"""Zero-copy proofs: worker arrays are views of arena blocks, and writes made in one
mapping are visible in another (the worker runs in a thread with its own mapping of
the same memfd, exactly as a worker process would)."""

import os
import threading
import unittest

import numpy as np
import torch

import tessera
from tessera.fb.DType import DType
from tessera.fb.TileDesc import TileDesc
from tessera_test_support import collect, small_client, wait_until


class InProcessWorker:
    """A tessera.Worker attached through the environment, driven on its own thread."""

    def __init__(self, client):
        index, slot, fd = client.add_external_worker("thread")
        os.environ["TESSERA_ARENA_FD"] = str(fd)  # from_env attaches through a duplicate
        os.environ["TESSERA_SLOT"] = str(slot)
        self.worker = tessera.Worker.from_env()
        client.set_worker_pid(index, os.getpid())
        self.index = index

    def take_one(self, timeout=10.0):
        batch = self.worker.take(1, timeout)
        assert batch, "no tile arrived"
        return batch[0]


class ZeroCopyTest(unittest.TestCase):
    def setUp(self):
        self.client = small_client()
        self.addCleanup(self.client.close)
        self.w = InProcessWorker(self.client)
        self.addCleanup(self.w.worker.close)
        self.stream = self.client.open_stream(ordered=True)

    def test_input_array_is_the_arena_block_and_sees_later_writes(self):
        block = self.client.alloc(32 * 32 * 3)
        src = block.array(np.uint8, (32, 32, 3))
        src[...] = 7
        self.client.submit(self.stream, block, x=5, y=6, level=2, op=9)
        result = {}

        def work():
            tile = self.w.take_one()
            arr = tile.input
            result["addr"] = arr.__array_interface__["data"][0]
            result["tile_addr"] = tile.input_address
            result["first"] = int(arr[0, 0, 0])
            result["writeable"] = arr.flags.writeable
            result["owndata"] = arr.flags.owndata
            t = torch.from_numpy(arr)
            result["torch_ptr"] = t.data_ptr()
            result["seen"].wait(10)  # the client now writes into its own mapping
            result["after"] = int(tile.input[31, 31, 2])
            result["after_torch"] = int(t[0, 0, 1])
            tile.publish(tile.output(np.uint8, (1,)))

        result["seen"] = threading.Event()
        th = threading.Thread(target=work)
        th.start()
        self.assertTrue(wait_until(lambda: "first" in result))
        src[31, 31, 2] = 201   # a write in the client's mapping ...
        src[0, 0, 1] = 99
        result["seen"].set()
        th.join(20)
        self.assertFalse(th.is_alive())
        self.assertEqual(result["addr"], result["tile_addr"], "input array must start at the arena block")
        self.assertEqual(result["torch_ptr"], result["tile_addr"], "torch.from_numpy must share the block")
        self.assertEqual(result["first"], 7)
        self.assertFalse(result["writeable"], "tile.input is read-only")
        self.assertFalse(result["owndata"])
        self.assertEqual(result["after"], 201, "... is visible through the worker's array: no copy was made")
        self.assertEqual(result["after_torch"], 99)
        got = collect(self.client, 1)
        self.assertEqual([r.outcome for r in got], ["completed"])

    def test_output_written_through_torch_is_what_the_client_reads(self):
        block = self.client.alloc(64)
        block.array(np.float32, (4, 4))[...] = np.arange(16, dtype=np.float32).reshape(4, 4)
        self.client.submit(self.stream, block)
        tile = self.w.take_one()
        out = tile.output(np.float32, (4, 4))
        self.assertTrue(out.flags.writeable)
        torch.from_numpy(out).copy_(torch.from_numpy(tile.input.copy()) * 2 + 1)  # written in place
        out_addr = out.__array_interface__["data"][0]
        tile.publish(out)
        self.assertFalse(tile.pending)
        got = collect(self.client, 1)
        self.assertEqual(len(got), 1)
        r = got[0]
        self.assertEqual(r.outcome, "completed", r.error)
        np.testing.assert_array_equal(r.output, np.arange(16, dtype=np.float32).reshape(4, 4) * 2 + 1)
        self.assertEqual(r.output.dtype, np.float32)
        self.assertNotEqual(out_addr, 0)
        # The client reads the result in place too: same bytes, a view (no owned copy).
        self.assertFalse(r.output.flags.owndata)

    def test_returned_array_that_is_not_an_output_block_is_copied(self):
        block = self.client.alloc(16)
        block.array(np.uint8, (16,))[...] = np.arange(16, dtype=np.uint8)
        self.client.submit(self.stream, block)
        tile = self.w.take_one()
        tile.publish((tile.input.astype(np.int64) * 1000).reshape(4, 4))
        r = collect(self.client, 1)[0]
        self.assertEqual(r.outcome, "completed", r.error)
        self.assertEqual(r.output.dtype, np.int64)
        np.testing.assert_array_equal(r.output, (np.arange(16) * 1000).reshape(4, 4))

    def test_python_reads_the_descriptor_cpp_wrote(self):
        block = self.client.alloc(10 * 20 * 3 * 2)
        block.array(np.uint16, (10, 20, 3))[...] = 1
        seq = self.client.submit(self.stream, block, x=-12, y=345, level=3, op=17)
        tile = self.w.take_one()
        raw = tile.descriptor
        self.assertEqual(len(raw), 64)
        d = TileDesc()
        d.Init(bytearray(raw), 0)
        self.assertEqual(d.Seq(), seq)
        self.assertEqual(d.Stream(), self.stream)
        self.assertEqual(d.X(), -12)
        self.assertEqual(d.Y(), 345)
        self.assertEqual(d.Level(), 3)
        self.assertEqual(d.Op(), 17)
        self.assertEqual(d.Dtype(), DType.UInt16)
        self.assertEqual(d.Ndim(), 3)
        self.assertEqual(d.Dims()[:3], [10, 20, 3])
        self.assertEqual(d.Nbytes(), 10 * 20 * 3 * 2)
        self.assertEqual((tile.x, tile.y, tile.level, tile.op, tile.seq), (-12, 345, 3, 17, seq))
        self.assertEqual(tile.shape, (10, 20, 3))
        self.assertEqual(tile.input.dtype, np.uint16)
        tile.fail("done")
        r = collect(self.client, 1)[0]
        self.assertEqual(r.outcome, "failed")
        self.assertIn("done", r.error)

    def test_answering_twice_is_an_error_and_blocks_come_back(self):
        block = self.client.alloc(16)
        block.array(np.uint8, (16,))
        self.client.submit(self.stream, block)
        tile = self.w.take_one()
        spare = tile.output(np.uint8, (100,))  # allocated, never published: freed on answer
        self.assertEqual(spare.shape, (100,))
        tile.cancel()
        with self.assertRaises(ValueError):
            tile.publish(np.zeros(3))
        r = collect(self.client, 1)[0]
        self.assertEqual(r.outcome, "canceled")
        del r
        self.assertEqual(self.client.held_blocks(self.w.worker.slot), 0)
        self.assertEqual(self.client.held_blocks(), 0)


if __name__ == "__main__":
    unittest.main()
