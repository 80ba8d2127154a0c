"""The SDK bench runs end to end in smoke mode and prints well-formed JSON lines
(numbers are reported, never gated on)."""

import json
import os
import subprocess
import sys
import unittest


class BenchSmokeTest(unittest.TestCase):
    def test_bench_sdk_prints_one_json_line_per_scenario(self):
        script = os.path.join(os.environ["TESSERA_BIN_DIR"], "tessera_bench_python_sdk.py")
        out = subprocess.run([sys.executable, script, "--smoke"], capture_output=True, text=True,
                             timeout=180, env=dict(os.environ))
        self.assertEqual(out.returncode, 0, out.stderr)
        records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        names = [(r["bench"], r.get("batch")) for r in records]
        for want in [("py_trivial", 1), ("py_trivial", 16), ("py_mean", 16), ("inproc_mean", None)]:
            self.assertIn(want, names)
        for r in records:
            self.assertGreater(r["tiles_per_s"], 0)
            self.assertGreater(r["us_per_tile"], 0)


if __name__ == "__main__":
    unittest.main()
