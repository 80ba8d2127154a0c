"""The drop-in checks of test_appose_worker.py through `tessera-broker --appose` +
worker.run (pool workers: `python3 -m tessera.worker`), plus what only the broker
does: Service.init() reaching every pool worker (respawns too), session affinity,
workers.stop, and no owned output segment surviving a SIGKILLed broker."""

import os
import shutil
import signal
import tempfile
import time
import unittest
from multiprocessing import resource_tracker

from appose_host import ApposeHost, BrokerDriver, kinds, outputs
from test_appose_worker import INIT, WORKER, ScriptCases, shm_exists

BROKER = os.path.join(os.environ.get("TESSERA_BIN_DIR", ""), "tessera-broker")


def private_runtime_dir(test):
    """A per-test XDG_RUNTIME_DIR, so the broker's owned-segment records are this test's."""
    d = tempfile.mkdtemp(prefix=f"tessera-appose-rt-{os.getpid()}-")
    test.addCleanup(shutil.rmtree, d, True)
    return d


def worker_env():
    return {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "TESSERA_KEEP": "yes"}


@unittest.skipUnless(os.access(BROKER, os.X_OK), "tessera-broker not built")
class ViaBrokerTest(ScriptCases, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rt = tempfile.mkdtemp(prefix=f"tessera-appose-rt-{os.getpid()}-")
        env = dict(os.environ, XDG_RUNTIME_DIR=cls.rt)
        cls.broker = BrokerDriver(BROKER, WORKER, count=2, init_script=INIT, env=env, worker_env=worker_env())

    @classmethod
    def tearDownClass(cls):
        rc = cls.broker.close()
        shutil.rmtree(cls.rt, True)
        assert rc == 0, f"broker exit code {rc}"

    def setUp(self):
        self.drv = self.broker
        self.affinity = {"session": self.id()}

    def dispose_output(self, seg):
        # Through the broker, the broker owns a forwarded output: the host closes and releases it.
        resource_tracker.unregister(seg._name, "shared_memory")
        seg.close()
        msgs = self.broker.op("shm.release", {"names": [seg.name]})
        self.assertEqual(outputs(msgs), {"released": 1})

    def test_service_init_reaches_every_worker_and_respawns(self):
        for w in self.broker.workers:
            self.assertEqual(outputs(self.broker.run("base + _private", worker=w)), {"result": 42})
        victim = self.broker.workers[0]
        pid = outputs(self.broker.run("import os\nos.getpid()", worker=victim))["result"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msgs = self.broker.run("import os\n[os.getpid(), base + _private]", worker=victim)
            if msgs[-1]["responseType"] == "COMPLETION" and outputs(msgs)["result"][0] != pid:
                break
            time.sleep(0.1)
        self.assertEqual(msgs[-1]["responseType"], "COMPLETION", msgs)
        self.assertNotEqual(outputs(msgs)["result"][0], pid, "a fresh process")
        self.assertEqual(outputs(msgs)["result"][1], 42, "the init script ran in the respawned worker")

    def test_session_pins_tasks_to_one_worker(self):
        pids = {outputs(self.broker.run("import os\nos.getpid()", session="pinned-a"))["result"] for _ in range(6)}
        self.assertEqual(len(pids), 1)
        other = {outputs(self.broker.run("import os\nos.getpid()", session="pinned-b"))["result"] for _ in range(3)}
        self.assertEqual(len(other), 1)
        self.assertNotEqual(pids, other, "two sessions on two workers spread over the pool")


@unittest.skipUnless(os.access(BROKER, os.X_OK), "tessera-broker not built")
class BrokerLifecycleTest(unittest.TestCase):
    def test_workers_stop_finishes_held_work_and_removes_the_worker(self):
        env = dict(os.environ, XDG_RUNTIME_DIR=private_runtime_dir(self))
        # The canary as an init step: a pool worker is ready once its Python runs scripts.
        b = BrokerDriver(BROKER, WORKER, count=2, env=env, worker_env=worker_env(), start_inputs={"init": ["ready"]})
        self.addCleanup(b.close)
        w0, w1 = b.workers
        slow = b.start("import time\ntask.update('started')\ntime.sleep(0.5)\n'finished'", worker=w0)
        self.assertTrue(b.host.wait_for(lambda: any(m["responseType"] == "UPDATE" for _, m in b.msgs.get(slow, [])), 20))
        stop = b.op("workers.stop", {"workers": [w0]})
        self.assertEqual(outputs(stop), {"stopped": [w0]})
        done = [m for _, m in b.wait(slow)]
        self.assertEqual(outputs(done), {"result": "finished"}, (done, b.stderr_text()[-3000:]))
        late = b.run("1", worker=w0)
        self.assertEqual(late[-1]["responseType"], "FAILURE", late)
        self.assertEqual(outputs(b.run("2")), {"result": 2}, "the other worker still serves")
        self.assertEqual(outputs(b.op("stats"))["workers"], 1)
        self.assertEqual(b.close(), 0)

    def test_failing_service_init_fails_workers_start_with_the_traceback(self):
        env = dict(os.environ, XDG_RUNTIME_DIR=private_runtime_dir(self))
        h = ApposeHost([BROKER, "--appose"], env=env, init_script="import json\nraise ValueError('init boom (probe)')\n")
        self.addCleanup(h.close)
        msgs = h.run("workers.start", {"argv": WORKER, "env": worker_env(), "ready_timeout_ms": 30000}, timeout=60)
        self.assertEqual(kinds(msgs), ["LAUNCH", "FAILURE"], msgs)
        self.assertIn("ValueError: init boom (probe)", msgs[-1]["error"])
        self.assertFalse(os.path.exists(h.init_path), "the broker deleted the init script file (Appose convention)")
        self.assertEqual(h.close(), 0)

    def test_sigkilled_broker_leaves_no_owned_output_segment_after_the_next_start(self):
        rt = private_runtime_dir(self)
        env = dict(os.environ, XDG_RUNTIME_DIR=rt)
        b = BrokerDriver(BROKER, WORKER, count=1, env=env, worker_env=worker_env())
        self.addCleanup(b.close, 5)
        msgs = b.run("import appose\nout = appose.NDArray('uint8', [32])\nout.ndarray()[:] = 3\nout")
        name = outputs(msgs)["result"]["shm"]["name"]
        self.assertTrue(shm_exists(name))
        b.host.proc.send_signal(signal.SIGKILL)
        b.host.proc.wait(10)
        self.assertTrue(shm_exists(name), "nobody cleaned up yet (SIGKILL)")
        self.addCleanup(lambda: shm_exists(name) and os.unlink("/dev/shm/" + name))
        nxt = BrokerDriver(BROKER, WORKER, count=1, env=env, worker_env=worker_env())
        self.addCleanup(nxt.close)
        self.assertFalse(shm_exists(name), "the next start unlinked what the killed broker owned")
        self.assertEqual(nxt.close(), 0)
        self.assertEqual([f for f in os.listdir(os.path.join(rt, f"tessera-{os.getuid()}"))], [],
                         "no owned-segment record left after a clean exit")


if __name__ == "__main__":
    unittest.main()
