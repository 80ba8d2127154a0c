#!/usr/bin/env python3
"""Measures `tessera batch` on one machine against a local nats-server (JetStream):

  throughput   the same batch on 1 and on 3 node processes (wall time submit -> all done)
  overhead     per-item cost: submit -> node starts work on an idle warm node, and
               tiny one-tile items per second through one node
  recovery     kill -9 of a node mid-slide -> another (idle) node starts the item

Usage: batch_bench.py [--bin build/release/bin] [--slides 24] [--size 2048] [--reps 3]
Prints one JSON line per measurement and a summary (median, min, max)."""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/release/bin")
ap.add_argument("--slides", type=int, default=24)
ap.add_argument("--size", type=int, default=2048)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--workers", type=int, default=2)
args = ap.parse_args()
TESSERA = os.path.abspath(os.path.join(args.bin, "tessera"))
tmp = tempfile.mkdtemp(prefix="tessera-batch-bench-")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

port = free_port()
URL = f"nats://127.0.0.1:{port}"
server = subprocess.Popen(["nats-server", "-js", "-sd", os.path.join(tmp, "js"), "-a", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
procs = []

def cleanup():
    for p in procs:
        if p.poll() is None: p.kill(); p.wait()
    server.kill(); server.wait()
    shutil.rmtree(tmp, ignore_errors=True)

def wait_port():
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError: time.sleep(0.1)
    raise SystemExit("nats-server did not start")

def submit(stream, slides, *extra):
    out = os.path.join(tmp, "out-" + stream)
    subprocess.run([TESSERA, "batch", "submit", "--nats", URL, "--stream", stream, "--out", out,
                    "--workers", str(args.workers), *extra, *slides], check=True, stdout=subprocess.DEVNULL)

def node(stream, name, *extra):
    log = open(os.path.join(tmp, f"{stream}-{name}.log"), "w")
    p = subprocess.Popen([TESSERA, "batch", "node", "--nats", URL, "--stream", stream, "--name", name, *extra],
                         stdout=log, stderr=log)
    procs.append(p); return p

def status(stream):
    r = subprocess.run([TESSERA, "batch", "status", "--nats", URL, "--stream", stream, "--json"],
                       capture_output=True, text=True)
    return json.loads(r.stdout) if r.stdout.strip().startswith("{") else None

def wait_finished(stream, total, timeout=600):
    end = time.time() + timeout
    while time.time() < end:
        s = status(stream)
        if s and s["total"] == total and s["finished"]: return s
        time.sleep(0.1)
    raise SystemExit(f"{stream}: not finished")

def emit(**kw):
    print(json.dumps(kw), flush=True); return kw

def summary(name, xs, unit):
    print(f"{name}: median {statistics.median(xs):.3f} {unit}, min {min(xs):.3f}, max {max(xs):.3f} (n={len(xs)})", flush=True)

try:
    wait_port()
    # --- throughput: 1 vs 3 node processes, same batch ---
    res = {1: [], 3: []}
    for rep in range(args.reps):
        for n in (1, 3):
            stream = f"tp{n}r{rep}"
            nodes = [node(stream, f"n{i}", "--exit-when-idle", "2") for i in range(n)]
            time.sleep(1.0)  # nodes connected and waiting
            slides = [f"synthetic:{args.size}:{1000 + i}" for i in range(args.slides)]
            t0 = time.time()
            submit(stream, slides)
            wait_finished(stream, args.slides)
            dt = time.time() - t0
            for p in nodes: p.wait(timeout=30)
            res[n].append(args.slides / dt)
            emit(bench="batch-throughput", nodes=n, slides=args.slides, size=args.size, workers_per_node=args.workers,
                 wall_s=round(dt, 3), slides_per_s=round(args.slides / dt, 3))
    summary("throughput 1 node (slides/s)", res[1], "")
    summary("throughput 3 nodes (slides/s)", res[3], "")
    summary("ratio 3 nodes / 1 node", [b / a for a, b in zip(res[1], res[3])], "x")

    # --- overhead: submit -> start on an idle, warm node; tiny items per second ---
    stream = "ovh"
    nd = node(stream, "warm", "--exit-when-idle", "30")
    submit(stream, ["synthetic:256:1"], "--op", "2")  # warms the pool
    wait_finished(stream, 1)
    lat = []
    for i in range(10):
        submit(stream, [f"synthetic:256:{100 + i}"], "--op", "2")
        s = wait_finished(stream, 2 + i)
        item = [it for it in s["items"] if it["stem"] == f"synthetic-256-{100 + i}"][0]
        lat.append((item["started_ms"] - item["submitted_ms"]) / 1000.0)
    summary("submit -> start of work, idle warm node (s)", lat, "s")
    tiny = [f"synthetic:256:{500 + i}" for i in range(50)]
    t0 = time.time()
    submit(stream, tiny, "--op", "2")
    s = wait_finished(stream, 61)
    dt = time.time() - t0
    work = sum(it["seconds"] for it in s["items"] if it["stem"].startswith("synthetic-256-5"))
    emit(bench="batch-tiny-items", items=50, wall_s=round(dt, 3), items_per_s=round(50 / dt, 2),
         per_item_ms=round(1000 * dt / 50, 1), job_ms_per_item=round(1000 * work / 50, 1))
    nd.send_signal(signal.SIGTERM); nd.wait(timeout=30)

    # --- recovery: kill -9 mid-slide, an idle node takes over after the ack wait ---
    rec = []
    for rep in range(args.reps):
        stream = f"rec{rep}"
        submit(stream, [f"synthetic:2048:{2000 + rep}"], "--op", "4", "--ack-wait", "2")
        a = node(stream, "a")
        while True:
            s = status(stream)
            if s and any(it["state"] == "running" and it["node"] == "a" for it in s["items"]): break
            time.sleep(0.05)
        b = node(stream, "b", "--exit-when-idle", "5")
        time.sleep(1.0)  # b connected and idle
        a.kill(); a.wait()
        t_kill = time.time() * 1000
        while True:
            s = status(stream)
            it = s["items"][0]
            if it["node"] == "b" and it["state"] in ("running", "done"): break
            time.sleep(0.02)
        rec.append((it["started_ms"] - t_kill) / 1000.0)
        emit(bench="batch-recovery", ack_wait_s=2, recovery_s=round(rec[-1], 3))
        b.wait(timeout=60)
    summary("kill -9 -> item restarted on another node, ack wait 2 s (s)", rec, "s")
finally:
    cleanup()
