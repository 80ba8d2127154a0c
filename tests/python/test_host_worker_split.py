"""The Python package's two halves and its pools: a worker process never loads the
host module; the unsupervised pool gives its workers a scrubbed environment and
they die with the process that started them."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import unittest

from tessera_test_support import PYTHON, python_worker, small_client, stderr_file, worker_env


class HostWorkerSplitTest(unittest.TestCase):
    def test_a_worker_imports_only_the_worker_module(self):
        code = ("import sys, tessera, tessera.worker, tessera.sdk; "
                "print('tessera._host' in sys.modules, 'tessera._worker' in sys.modules)")
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["False", "True"])

    def test_the_host_module_raises_the_worker_modules_error_type(self):
        import tessera
        with self.assertRaises(tessera.TesseraError) as cm:
            tessera.Client.connect(f"/tmp/tessera-no-broker-{os.getpid()}.sock", timeout=0.2)
        self.assertEqual(cm.exception.code, "unavailable")

    def test_unsupervised_workers_get_no_secrets(self):
        os.environ["AWS_SECRET_ACCESS_KEY"] = "do-not-leak"
        self.addCleanup(os.environ.pop, "AWS_SECRET_ACCESS_KEY", None)
        client = small_client()
        self.addCleanup(client.close)
        index = client.start_unsupervised_pool(python_worker("numpy_worker:handler"), env=worker_env(EXTRA="yes"),
                                               stderr=stderr_file(self))[0]
        with open(f"/proc/{client.worker_process(index).pid}/environ", "rb") as f:
            names = {kv.split(b"=", 1)[0] for kv in f.read().split(b"\0") if kv}
        self.assertNotIn(b"AWS_SECRET_ACCESS_KEY", names)
        self.assertIn(b"EXTRA", names)
        self.assertIn(b"TESSERA_SLOT", names)

    def test_unsupervised_workers_die_with_their_client(self):
        script = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
            from tessera_test_support import python_worker, small_client, worker_env
            client = small_client()
            i = client.start_unsupervised_pool(python_worker("numpy_worker:handler"), env=worker_env(),
                                               stderr=subprocess.DEVNULL)[0]
            print(client.worker_process(i).pid, flush=True)
            import time
            time.sleep(60)
        """).replace("import sys\n", "import subprocess, sys\n", 1)
        host = subprocess.Popen([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
        self.addCleanup(host.stdout.close)
        self.addCleanup(lambda: host.poll() is None and host.kill())
        worker_pid = int(host.stdout.readline())
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                os.kill(worker_pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(worker_pid, signal.SIGKILL)
        self.fail("the worker outlived the client that started it")


if __name__ == "__main__":
    unittest.main()
