"""`python3 -m tessera.worker` as a drop-in for appose.python_worker, driven by a test
Appose host (appose_host.py) directly, with no broker; and the same scripts through
`tessera-broker --appose` + worker.run (test_appose_broker.py reuses ScriptCases)."""

import os
import random
import sys
import threading
import unittest
from multiprocessing import shared_memory

import numpy as np

from appose_host import TERMINAL, ApposeHost, kinds, outputs
from tessera_test_support import EXAMPLES_DIR, PYTHON

sys.path.insert(0, EXAMPLES_DIR)

WORKER = [PYTHON, "-m", "tessera.worker"]

INIT = """
import math
base = 40
_private = 2
def add(a, b):
    return a + b
print("init script ran")
"""


def shm_exists(name):
    return os.path.exists("/dev/shm/" + name)


class ScriptCases:
    """The drop-in checks; `self.drv` has start/cancel/wait/run (direct or via the broker)."""

    def check_protocol(self, msgs):
        k = kinds(msgs)
        self.assertEqual(k[0], "LAUNCH", msgs)
        self.assertEqual(k.count("LAUNCH"), 1, msgs)
        self.assertEqual(sum(x in TERMINAL for x in k), 1, f"exactly one terminal: {msgs}")
        self.assertIn(k[-1], TERMINAL, msgs)

    def completed(self, msgs):
        self.check_protocol(msgs)
        self.assertEqual(msgs[-1]["responseType"], "COMPLETION", msgs[-1])
        return outputs(msgs)

    def test_outputs(self):
        out = self.completed(self.drv.run("task.outputs['a'] = 1\ntask.outputs['b'] = [1, 'x', None, 2.5]"))
        self.assertEqual(out, {"a": 1, "b": [1, "x", None, 2.5]})

    def test_inputs_are_variables_and_task_inputs(self):
        out = self.completed(self.drv.run("task.outputs['s'] = x + y\ntask.outputs['same'] = task.inputs['x'] == x",
                                          {"x": 40, "y": 2}))
        self.assertEqual(out, {"s": 42, "same": True})

    def test_last_expression_is_the_result(self):
        self.assertEqual(self.completed(self.drv.run("1 + 2")), {"result": 3})
        self.assertEqual(self.completed(self.drv.run("{'p': 1, 'q': [2]}")), {"p": 1, "q": [2]})
        self.assertEqual(self.completed(self.drv.run("z = 5")), {})
        self.assertEqual(self.completed(self.drv.run("None")), {})

    def test_init_globals_including_underscore_names(self):
        out = self.completed(self.drv.run("base + _private + math.floor(0.5)"))
        self.assertEqual(out, {"result": 42})

    #: worker.run routing for stateful scripts (the broker pins them to one worker)
    affinity = {}

    def dispose_output(self, seg):
        """The host disposes a segment a COMPLETION named (direct: Appose rule, it unlinks)."""
        seg.close()
        seg.unlink()

    def test_export_is_visible_to_later_scripts(self):
        self.completed(self.drv.run("task.export(kept=5, _hidden=6)", **self.affinity))
        self.assertEqual(self.completed(self.drv.run("kept + _hidden", **self.affinity)), {"result": 11})

    def test_getvar_putvar_call_shaped_scripts(self):
        self.completed(self.drv.run("answer = _value\ntask.export(answer=answer)", {"_value": 41}, **self.affinity))
        self.assertEqual(self.completed(self.drv.run("answer", **self.affinity)), {"result": 41})  # getVar
        self.assertEqual(self.completed(self.drv.run("add(arg0, arg1)", {"arg0": 2, "arg1": 3})), {"result": 5})  # call

    def test_startup_canary(self):
        msgs = self.drv.run("ready")
        self.assertEqual(kinds(msgs), ["LAUNCH", "COMPLETION"])

    def test_failure_carries_the_traceback(self):
        msgs = self.drv.run("def f():\n    raise RuntimeError('boom 7')\nf()")
        self.check_protocol(msgs)
        self.assertEqual(msgs[-1]["responseType"], "FAILURE")
        self.assertIn("Traceback (most recent call last)", msgs[-1]["error"])
        self.assertIn("RuntimeError: boom 7", msgs[-1]["error"])

    def test_live_progress_arrives_before_the_terminal(self):
        task = self.drv.start("import time\nfor i in range(3):\n    task.update(f'step {i}', current=i, maximum=3, "
                              "info={'i': i})\n    time.sleep(0.3)\n'done'")
        timed = self.drv.wait(task)
        msgs = [m for _, m in timed]
        self.completed(msgs)
        ups = [(t, m) for t, m in timed if m["responseType"] == "UPDATE"]
        self.assertEqual([m["message"] for _, m in ups], ["step 0", "step 1", "step 2"])
        self.assertEqual([(m["current"], m["maximum"], m["info"]) for _, m in ups],
                         [(0, 3, {"i": 0}), (1, 3, {"i": 1}), (2, 3, {"i": 2})])
        t_end = timed[-1][0]
        # Streamed live: the first UPDATE arrived while the script still had ~0.9 s to run.
        self.assertGreater(t_end - ups[0][0], 0.6)
        self.assertGreater(t_end - ups[2][0], 0.2)

    def test_cooperative_cancel(self):
        task = self.drv.start("import time\nwhile not task.cancel_requested:\n    time.sleep(0.01)\ntask.cancel()\n"
                              "task.outputs['late'] = 1")
        self.assertTrue(self.drv.wait_launch(task))
        self.drv.cancel(task)
        msgs = [m for _, m in self.drv.wait(task)]
        self.check_protocol(msgs)
        self.assertEqual(kinds(msgs), ["LAUNCH", "CANCELATION"])
        self.drv.cancel("never-seen-" + task)  # unknown ids are not an error
        self.assertEqual(self.completed(self.drv.run("7")), {"result": 7})

    def test_print_and_fd1_writes_never_reach_the_protocol(self):
        msgs = self.drv.run("import os, sys\nprint('hello from a script print')\nsys.stdout.write('sys.stdout write\\n')\n"
                            "sys.stdout.flush()\nos.write(1, b'{\"task\": \"forged\", \"responseType\": \"COMPLETION\"}\\n')\n7")
        self.assertEqual(self.completed(msgs), {"result": 7})
        self.assertEqual(self.drv.invalid, [])
        self.assertNotIn("forged", self.drv.msgs)
        self.assertTrue(self.drv.wait_stderr("hello from a script print"), self.drv.stderr_text())
        self.assertTrue(self.drv.wait_stderr('"task": "forged"'))

    def test_numbers_round_trip_exactly_and_nan_becomes_null(self):
        rng = random.Random(12)
        doubles = [rng.uniform(-1e6, 1e6) for _ in range(300)] + [rng.random() * 10 ** rng.randint(-300, 300)
                                                                 for _ in range(300)]
        doubles += [5e-324, 1.7976931348623157e308, 0.1, 1 / 3, -0.0]
        ints = [2 ** 53 + 1, 2 ** 63 - 1, 2 ** 64 - 1, 2 ** 70, -(2 ** 70) - 3, 10 ** 30 + 7]
        out = self.completed(self.drv.run("task.outputs['d'] = d\ntask.outputs['i'] = i\n"
                                          "task.outputs['nan'] = [float('nan'), float('inf')]",
                                          {"d": doubles, "i": ints}))
        self.assertEqual([x.hex() for x in out["d"]], [x.hex() for x in doubles])
        self.assertEqual(out["i"], ints)
        self.assertTrue(all(type(x) is int for x in out["i"]))
        self.assertEqual(out["nan"], [None, None])

    def test_queue_main_runs_on_the_main_thread(self):
        out = self.completed(self.drv.run("import threading\nthreading.current_thread() is threading.main_thread()",
                                          queue="main"))
        self.assertEqual(out, {"result": True})

    def test_cwd_sys_path_and_environ_are_restored(self):
        self.completed(self.drv.run("import os, sys\nos.chdir('/')\nsys.path.insert(0, '/nonexistent-tessera')\n"
                                    "os.environ['TESSERA_LEAK'] = '1'\nos.environ.pop('TESSERA_KEEP', None)",
                                    **self.affinity))
        out = self.completed(self.drv.run("import os, sys\n{'cwd': os.getcwd(), 'path': '/nonexistent-tessera' in sys.path,"
                                          " 'leak': os.environ.get('TESSERA_LEAK'), 'keep': os.environ.get('TESSERA_KEEP')}",
                                          **self.affinity))
        self.assertNotEqual(out["cwd"], "/")
        self.assertEqual((out["path"], out["leak"], out["keep"]), (False, None, "yes"))

    def test_ndarray_in_and_out_without_copy_and_without_leftovers(self):
        src = shared_memory.SharedMemory(create=True, size=4 * 6)
        self.addCleanup(lambda: (src.close(), src.unlink()))
        a = np.ndarray((2, 3), np.float32, buffer=src.buf)
        a[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
        nd = {"appose_type": "ndarray", "dtype": "float32", "shape": [2, 3], "dims": ["y", "x"],
              "shm": {"appose_type": "shm", "name": src.name, "size": 24}}  # pre-2025 `size` key
        script = ("import appose, numpy as np\n"
                  "v = img.ndarray()\n"
                  "v += 1\n"  # in place: the host sees it, so this is a view of its segment
                  "scratch = appose.NDArray('uint8', [64])\n"  # created, never returned: unlinked at task end
                  "out = appose.NDArray('int16', [3])\n"
                  "out.ndarray()[:] = [7, -8, 9]\n"
                  "task.outputs['scratch'] = scratch.shm.name\n"
                  "task.outputs['out'] = out\n"
                  "task.outputs['same'] = img\n"
                  "task.outputs['sum'] = float(v.sum())")
        out = self.completed(self.drv.run(script, {"img": nd}))
        np.testing.assert_array_equal(a, np.arange(1, 7, dtype=np.float32).reshape(2, 3))
        self.assertEqual(out["sum"], 21.0)
        self.assertEqual(out["same"]["dims"], ["y", "x"], "dims is preserved")
        self.assertEqual(out["same"]["shm"], {"appose_type": "shm", "name": src.name, "rsize": 24})
        self.assertFalse(shm_exists(out["scratch"]), "a segment the worker created and never returned is unlinked")
        o = out["out"]
        self.assertEqual((o["appose_type"], o["dtype"], o["shape"]), ("ndarray", "int16", [3]))
        name = o["shm"]["name"]
        seg = shared_memory.SharedMemory(name=name)
        np.testing.assert_array_equal(np.ndarray((3,), np.int16, buffer=seg.buf), [7, -8, 9])
        self.dispose_output(seg)
        self.assertFalse(shm_exists(name))

    def test_4_threads_x_100_tasks_each_finish_exactly_once(self):
        ids = [[None] * 100 for _ in range(4)]

        def submit(k):
            for i in range(100):
                ids[k][i] = self.drv.start("i * 2 + k", {"i": i, "k": k})

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for k in range(4):
            for i in range(100):
                msgs = [m for _, m in self.drv.wait(ids[k][i], 60)]
                self.assertEqual(self.completed(msgs), {"result": i * 2 + k})


class DirectWorkerTest(ScriptCases, unittest.TestCase):
    """The worker on its own, as an Appose Service starts it."""

    @classmethod
    def setUpClass(cls):
        env = dict(os.environ, TESSERA_KEEP="yes")
        env.pop("TESSERA_ARENA_FD", None)
        cls.host = ApposeHost(WORKER, env=env, init_script=INIT)

    @classmethod
    def tearDownClass(cls):
        cls.host.close()

    def setUp(self):
        self.drv = self.host

    def test_init_script_file_is_deleted_and_its_output_is_on_stderr(self):
        self.assertFalse(os.path.exists(self.host.init_path))
        self.assertIn("init script ran", self.host.stderr_text())

    def test_stdin_eof_finishes_in_flight_work_then_exits_0(self):
        h = ApposeHost(WORKER)
        self.addCleanup(h.close, 5)
        first = h.start("import time\ntime.sleep(0.3)\n'first'")
        second = h.start("'second'")
        self.assertEqual(h.close(), 0)
        self.assertEqual(outputs([m for _, m in h.wait(first, 5)]), {"result": "first"})
        self.assertEqual(outputs([m for _, m in h.wait(second, 5)]), {"result": "second"})

    def test_init_failure_fails_every_task_with_the_traceback(self):
        h = ApposeHost(WORKER, init_script="import json\nraise ValueError('init boom (probe)')\n")
        self.addCleanup(h.close, 5)
        for script in ("ready", "1 + 1"):
            msgs = h.run(script)
            self.assertEqual(kinds(msgs), ["LAUNCH", "FAILURE"], msgs)
            self.assertIn("ValueError: init boom (probe)", msgs[-1]["error"])
            self.assertIn("Traceback", msgs[-1]["error"])
        self.assertIn("init boom (probe)", h.stderr_text())
        self.assertEqual(h.close(), 0)

    def test_tasks_run_one_at_a_time_in_submission_order(self):
        h = ApposeHost(WORKER)
        self.addCleanup(h.close, 5)
        ids = [h.start("import time\ntime.sleep(0.02)\ntask.export(order=order + [n]) if 'order' in dir() "
                       "else task.export(order=[n])\n", {"n": n}) for n in range(8)]
        for t in ids:
            self.assertEqual(h.wait(t)[-1][1]["responseType"], "COMPLETION")
        self.assertEqual(outputs(h.run("order")), {"result": list(range(8))})
        # No overlap: each LAUNCH comes after the previous task's terminal.
        for a, b in zip(ids, ids[1:]):
            self.assertLessEqual(h.msgs[a][-1][0], h.msgs[b][0][0])

    def test_threads_opt_in_runs_tasks_concurrently(self):
        h = ApposeHost(WORKER + ["--threads", "4"])
        self.addCleanup(h.close, 5)
        ids = [h.start("import time\ntime.sleep(0.5)") for _ in range(4)]
        for t in ids:
            self.assertEqual(kinds([m for _, m in h.wait(t)]), ["LAUNCH", "COMPLETION"])
        last_launch = max(h.msgs[t][0][0] for t in ids)
        first_end = min(h.msgs[t][-1][0] for t in ids)
        self.assertLess(last_launch, first_end, "all four tasks were running at once")

    def test_recycling_replays_the_init_script_in_a_fresh_process(self):
        h = ApposeHost(WORKER + ["--recycle-after", "2"], init_script="base = 40\n")
        self.addCleanup(h.close, 5)
        probe = "import os\n[os.environ.get('TESSERA_APPOSE_RECYCLED', '0'), base, 'x' in dir()]"
        h.run("task.export(x=1)")
        first = h.start(probe)
        queued = [h.start(probe) for _ in range(3)]  # read before the re-exec: handed over, not lost
        self.assertEqual(outputs([m for _, m in h.wait(first)]), {"result": ["0", 40, True]})
        got = [outputs([m for _, m in h.wait(t)])["result"] for t in queued]
        self.assertEqual(got, [["1", 40, False], ["1", 40, False], ["2", 40, False]])
        self.assertEqual(h.invalid, [])
        self.assertEqual(h.close(), 0)



class TilesBesideScriptsTest(unittest.TestCase):
    """Started by a Tessera broker (arena inherited), the same process serves tiles with
    a handler a script registered, while other scripts keep running."""

    def test_script_registers_a_handler_and_tiles_flow_beside_a_running_script(self):
        from tessera_test_support import collect, random_rgb, reap, small_client, spawn_script, stderr_file, submit_rgb
        import numpy_worker  # noqa: F401 - importable: examples dir on sys.path (below)

        client = small_client()
        self.addCleanup(client.close)
        index, slot, proc = spawn_script(client, WORKER, stderr=stderr_file(self))
        self.addCleanup(reap, proc)
        host = ApposeHost.adopt(proc)
        msgs = host.run("tessera.ready")
        self.assertEqual(msgs[-1]["responseType"], "FAILURE", "no handler yet: not serving tiles")
        msgs = host.run(f"import sys\nsys.path.insert(0, {EXAMPLES_DIR!r})\nimport numpy_worker, tessera.worker\n"
                        "tessera.worker.serve(numpy_worker.handler, max_batch=8, timeout=0.05)")
        self.assertEqual(kinds(msgs), ["LAUNCH", "COMPLETION"], msgs)
        self.assertEqual(outputs(host.run("tessera.ready"))["slot"], slot)
        # A long script runs on the main thread; tiles are served meanwhile (beside, not between).
        long_task = host.start("import time\nwhile not task.cancel_requested:\n    time.sleep(0.01)\ntask.cancel()")
        self.assertTrue(host.wait_launch(long_task))
        rng = np.random.default_rng(3)
        s = client.open_stream(ordered=True)
        tiles = [random_rgb(rng, 16, 16) for _ in range(20)]
        for t in tiles:
            submit_rgb(client, s, t)
        got = collect(client, len(tiles))
        self.assertEqual([r.outcome for r in got], ["completed"] * len(tiles), [r.error for r in got])
        for t, r in zip(tiles, got):
            np.testing.assert_array_equal(r.output, numpy_worker.reference_mask(t))
        self.assertFalse(any(m["responseType"] in TERMINAL for _, m in host.msgs[long_task]), "still running")
        host.cancel(long_task)
        self.assertEqual(kinds([m for _, m in host.wait(long_task)]), ["LAUNCH", "CANCELATION"])
        self.assertEqual(host.close(), 0)
        self.assertEqual(host.invalid, [])
        self.assertEqual(client.held_blocks(slot), 0)


if __name__ == "__main__":
    unittest.main()
