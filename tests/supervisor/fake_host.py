"""Drives `tessera-broker --appose` the way an Appose host (appose-python Service)
does: text-mode pipes, json.dumps requests (NaN as a bare token), one reader.

usage: fake_host.py <tessera-broker> <fake_worker.py> <io_uring|epoll>
Exit 0 when every check passed; prints the failed checks otherwise.
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from multiprocessing import shared_memory, resource_tracker

broker, worker, loop = sys.argv[1], sys.argv[2], sys.argv[3]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def strict(line):
    def bad_constant(tok):
        raise ValueError("non-JSON constant " + tok)
    return json.loads(line, parse_constant=bad_constant)


env = dict(os.environ, TESSERA_EVENT_LOOP=loop, TESSERA_HOST_SECRET="do-not-leak")
proc = subprocess.Popen([broker, "--appose"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=env)
responses = {}
lines = queue.Queue()
raw_lines = []


def reader():
    for line in proc.stdout:
        raw_lines.append(line)
        lines.put(line)


stderr_lines = []
threading.Thread(target=reader, daemon=True).start()
threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True).start()


def send(obj):
    proc.stdin.write(json.dumps(obj) + "\n")
    proc.stdin.flush()


def execute(script, inputs=None):
    task = uuid.uuid4().hex
    responses[task] = []
    send({"task": task, "requestType": "EXECUTE", "script": script, "inputs": inputs or {}, "queue": None})
    return task


def pump(until, timeout=20):
    end = time.time() + timeout
    while not until() and time.time() < end:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        msg = strict(line)
        responses.setdefault(msg["task"], []).append(msg)


def terminal(task):
    return any(m["responseType"] in ("COMPLETION", "FAILURE", "CANCELATION") for m in responses.get(task, []))


def wait(task, timeout=20):
    pump(lambda: terminal(task), timeout)
    check(terminal(task), "task %s (%s) finished" % (task, responses.get(task)))
    return responses.get(task, [])


def outputs(task):
    msgs = [m for m in responses[task] if m["responseType"] == "COMPLETION"]
    return msgs[0].get("outputs", {}) if msgs else {}


# ping
t = wait(execute("ping"))
check([m["responseType"] for m in t] == ["LAUNCH", "COMPLETION"], "ping sequence %s" % t)
check(outputs(t[0]["task"]).get("backend") == loop, "ping reports the %s back end" % loop)

# garbage from the host is logged and counted, never fatal
proc.stdin.write("this is not json\n\n{\"task\":\"x\",\"requestType\":\"BOGUS\"}\n")
proc.stdin.flush()

# workers
t = wait(execute("workers.start", {"argv": ["/usr/bin/python3", worker], "count": 2, "init": ["noop", "import json"]}))
check(t[-1]["responseType"] == "COMPLETION" and len(outputs(t[0]["task"])["workers"]) == 2, "workers.start %s" % t)
pids = outputs(t[0]["task"]).get("pids", [])
bad = wait(execute("workers.start", {"argv": ["/usr/bin/python3", worker], "init": ["import no_such_module_qq"]}))
check(bad[-1]["responseType"] == "FAILURE" and "No module named 'no_such_module_qq'" in bad[-1].get("error", ""),
      "init ImportError reaches the host: %s" % bad[-1])

# worker.run: outputs, UPDATEs, NaN in, non-ASCII out
t = wait(execute("worker.run", {"script": "echo", "inputs": {"v": float("nan"), "s": "caf\u00e9"}}))
check(outputs(t[0]["task"]) == {"v": None, "s": "caf\u00e9"}, "echo outputs %s" % outputs(t[0]["task"]))
t = wait(execute("worker.run", {"script": "updates 3"}))
check([m["responseType"] for m in t] == ["LAUNCH", "UPDATE", "UPDATE", "UPDATE", "COMPLETION"], "updates %s" % t)
check(all(isinstance(m.get("current"), int) for m in t if m["responseType"] == "UPDATE"), "typed UPDATE fields")
t = wait(execute("worker.run", {"script": "fail bad input"}))
check(t[-1] == {"task": t[0]["task"], "responseType": "FAILURE", "error": "bad input"}, "failure %s" % t[-1])
t = wait(execute("worker.run", {"script": "env TESSERA_HOST_SECRET"}))
check(outputs(t[0]["task"]).get("value") is None, "host secret did not reach the pool worker")

# reference-worker double terminal and crash: exactly one terminal each
t = wait(execute("worker.run", {"script": "double"}))
t2 = wait(execute("worker.run", {"script": "crash host test"}))
check(t2[-1]["responseType"] in ("FAILURE", "COMPLETION"), "crash reported %s" % t2[-1])

# cancel
c = execute("worker.run", {"script": "sleep 10"})
pump(lambda: len(responses[c]) >= 1, 5)
time.sleep(0.2)
send({"task": c, "requestType": "CANCEL"})
t = wait(c, 10)
check([m["responseType"] for m in t] == ["LAUNCH", "CANCELATION"], "cancel %s" % t)
send({"task": "never-seen", "requestType": "CANCEL"})

# NDArray in: the host owns and unlinks its segment; the worker only attaches.
shm_in = shared_memory.SharedMemory(create=True, size=16)
shm_in.buf[:16] = bytes(range(16))
nd = {"appose_type": "ndarray", "dtype": "uint8", "shape": [16],
      "shm": {"appose_type": "shm", "name": shm_in.name, "size": 16}}  # old key: accepted
t = wait(execute("worker.run", {"script": "shm_in", "inputs": {"img": nd}}))
check(outputs(t[0]["task"]).get("sum") == sum(range(16)), "ndarray input %s" % t[-1])

# NDArray out: the worker creates it, the broker owns it; the host attaches and reads.
t = wait(execute("worker.run", {"script": "shm_out 64"}))
out = outputs(t[0]["task"]).get("img", {})
out_name = out.get("shm", {}).get("name")
check(out.get("appose_type") == "ndarray" and out["shm"].get("rsize") == 64, "ndarray output %s" % out)
if out_name:
    seg = shared_memory.SharedMemory(name=out_name)
    resource_tracker.unregister(seg._name, "shared_memory")  # we only attached: not ours to unlink
    check(bytes(seg.buf[:64]) == bytes([7]) * 64, "output bytes")
    seg.close()
t = wait(execute("worker.run", {"script": "shm_out 32"}))
released = outputs(t[0]["task"]).get("img", {}).get("shm", {}).get("name")
t = wait(execute("shm.release", {"names": [released]}))
check(outputs(t[0]["task"]).get("released") == 1, "shm.release %s" % t)
check(not os.path.exists("/dev/shm/" + str(released)), "released segment unlinked")

# many concurrent tasks
ids = [execute("worker.run", {"script": "echo", "inputs": {"i": i}}) for i in range(100)]
for i, task in enumerate(ids):
    r = wait(task)
    check(outputs(task) == {"i": i}, "concurrent echo %d" % i)

t = wait(execute("stats"))
st = outputs(t[0]["task"])
check(st.get("bad_requests") == 2, "bad requests counted: %s" % st)
check(st.get("dropped_responses", 0) >= 2, "double terminal dropped: %s" % st)

# a task in flight at EOF still gets its terminal; then exit 0
last = execute("worker.run", {"script": "sleep 0.3"})
pump(lambda: len(responses[last]) >= 1, 5)
proc.stdin.close()
rc = proc.wait(timeout=20)
pump(lambda: terminal(last), 5)
check(rc == 0, "broker exit code %s" % rc)
check([m["responseType"] for m in responses[last]] == ["LAUNCH", "COMPLETION"], "in-flight at EOF %s" % responses[last])

# protocol hygiene over the whole run
for task, msgs in responses.items():
    kinds = [m["responseType"] for m in msgs]
    check(sum(k in ("COMPLETION", "FAILURE", "CANCELATION") for k in kinds) == 1, "one terminal for %s: %s" % (task, kinds))
    check(kinds[0] == "LAUNCH" and kinds.count("LAUNCH") == 1, "LAUNCH first and once for %s: %s" % (task, kinds))
check(all(l.isascii() and l.endswith("\n") and l.count("\n") == 1 for l in raw_lines), "ASCII single lines only")
check(all(l.lstrip().startswith("{") for l in raw_lines), "nothing but protocol lines on stdout")

# nothing leaked: segments, workers
check(out_name is None or not os.path.exists("/dev/shm/" + out_name), "output segment unlinked at broker exit")
shm_in.close()
shm_in.unlink()
for pid in pids:
    check(not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z",
          "worker %d gone" % pid)

if failures:
    print("%d check(s) failed" % len(failures), file=sys.stderr)
    print("".join(stderr_lines[-30:]), file=sys.stderr)
    sys.exit(1)
print("all checks passed", file=sys.stderr)
