"""Scripted fake Appose worker for the supervisor and broker tests.

Behaves like the reference Appose Python worker: one thread per task, responses
from several threads interleave (each line is one os.write), CANCEL sets a flag,
a canceled `sleep` task answers CANCELATION *and then* COMPLETION (as upstream
does), stdin EOF waits for running tasks and exits 0. The EXECUTE `script` is a
command: "<op> [arg]". Run with /usr/bin/python3.
"""
import json
import os
import signal
import sys
import threading
import time
import traceback

lock = threading.Lock()
cancel_flags = {}
threads = []


def raw(line):
    data = (line + "\n").encode()
    with lock:
        os.write(1, data)


def send(task, rtype, **fields):
    msg = {"task": task, "responseType": rtype}
    msg.update(fields)
    raw(json.dumps(msg))


def canceled(task):
    return cancel_flags.get(task, False)


def run(task, script, inputs):
    op, _, arg = script.partition(" ")
    if op == "exit_before_launch":
        os._exit(int(arg or 5))
    send(task, "LAUNCH")
    if op in ("echo", "noop"):
        send(task, "COMPLETION", outputs=inputs if op == "echo" else {})
    elif op == "updates":
        n = int(arg)
        for i in range(n):
            send(task, "UPDATE", message="step %d" % i, current=i + 1, maximum=n, info=None)
        send(task, "COMPLETION", outputs={"n": n})
    elif op == "sleep":
        end = time.time() + float(arg)
        while time.time() < end:
            if canceled(task):
                send(task, "CANCELATION")
                break
            time.sleep(0.01)
        send(task, "COMPLETION", outputs={"slept": float(arg)})  # upstream double terminal
    elif op == "ignore_cancel":
        time.sleep(float(arg))
        send(task, "COMPLETION", outputs={})
    elif op == "fail":
        send(task, "FAILURE", error=arg)
    elif op == "crash":
        sys.stderr.write("about to crash: %s\n" % (arg or "no reason"))
        sys.stderr.flush()
        os._exit(3)
    elif op == "complete_exit":
        for i in range(int(arg or 0)):
            send(task, "UPDATE", message="u%d" % i, current=i, maximum=int(arg), info=None)
        send(task, "COMPLETION", outputs={"done": True})
        os._exit(0)  # upstream E11: exit right after the terminal line
    elif op == "crash_after_updates":
        for i in range(int(arg)):
            send(task, "UPDATE", current=i, maximum=int(arg), info=None)
        os._exit(4)
    elif op == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif op == "deaf":
        while True:
            time.sleep(1)
    elif op == "print":
        print("hello from script", flush=True)  # stray stdout text
        send(task, "COMPLETION", outputs={})
    elif op == "garbage":
        raw("")
        raw("   ")
        raw("not json at all")
        raw('{"task":"%s","responseType":"CRASH"}' % task)
        raw('{"task":"%s","responseType":"UPDATE","current":"3"}' % task)
        raw('{"task":"%s","responseType":"UPDATE","info":[1]}' % task)
        raw('{"task":"nosuchtask","responseType":"COMPLETION"}')
        raw('[1,2,3]')
        raw('{"responseType":"UPDATE"}')
        send(task, "UPDATE", message="nan ahead", current=1, maximum=2, info={"v": float("nan")})
        send(task, "COMPLETION", outputs={"x": float("nan"), "y": float("inf"), "s": "gr\u00fc\u00df"})
    elif op == "double":
        send(task, "COMPLETION", outputs={"first": True})
        send(task, "FAILURE", error="second terminal")
        send(task, "LAUNCH")
        send(task, "UPDATE", message="late")
    elif op == "update_first":
        pass
    elif op == "import":
        try:
            __import__(arg)
            send(task, "COMPLETION", outputs={})
        except Exception as e:
            traceback.print_exc()
            sys.stderr.flush()
            send(task, "FAILURE", error="%s: %s" % (type(e).__name__, e))
    elif op == "env":
        send(task, "COMPLETION", outputs={"value": os.environ.get(arg)})
    elif op == "fds":
        send(task, "COMPLETION", outputs={"fds": sorted(int(f) for f in os.listdir("/proc/self/fd"))})
    elif op == "readfd":
        fd = int(arg)
        os.lseek(fd, 0, 0)
        send(task, "COMPLETION", outputs={"data": os.read(fd, 64).decode()})
    elif op == "shm_out":
        from multiprocessing import shared_memory, resource_tracker
        n = int(arg)
        shm = shared_memory.SharedMemory(create=True, size=n)
        resource_tracker.unregister(shm._name, "shared_memory")  # as the Appose worker does
        shm.buf[:n] = bytes([7]) * n
        name = shm.name
        shm.close()
        send(task, "COMPLETION", outputs={"img": {"appose_type": "ndarray", "dtype": "uint8", "shape": [n],
                                                  "shm": {"appose_type": "shm", "name": name, "rsize": n}}})
    elif op == "shm_in":
        from multiprocessing import shared_memory, resource_tracker
        spec = inputs["img"]["shm"]
        shm = shared_memory.SharedMemory(name=spec["name"], create=False)
        resource_tracker.unregister(shm._name, "shared_memory")
        total = sum(shm.buf[: spec["rsize"]])
        shm.close()
        send(task, "COMPLETION", outputs={"sum": total})
    else:
        send(task, "FAILURE", error="unknown op " + op)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--start-fail":
        sys.stderr.write("fatal: %s\n" % sys.argv[2])
        sys.exit(1)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError:
            sys.stderr.write("bad request line: %r\n" % line)
            continue
        task = req.get("task")
        if req.get("requestType") == "CANCEL":
            if task in cancel_flags:
                cancel_flags[task] = True
            else:
                sys.stderr.write("No such task: %s\n" % task)
            continue
        script = req.get("script", "")
        if script.startswith("update_first"):
            send(task, "UPDATE", message="before launch")
            send(task, "COMPLETION", outputs={})
            continue
        cancel_flags[task] = False
        t = threading.Thread(target=run, args=(task, script, req.get("inputs") or {}), daemon=True)
        threads.append(t)
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
