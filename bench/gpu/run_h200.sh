#!/usr/bin/env bash
# GPU measurements for batched workers (not yet run on a GPU; see docs/benchmarks.md):
#  (a) host->device copy of tiles from a cudaHostRegister'ed arena vs from pageable memory
#  (b) tiles/s of a small ResNet-like CNN (random weights, nothing downloaded) through
#      Tessera (one worker, --devices 0, tessera.torch batch handler) at batch 1/32/128,
#      vs the same net fed from in-process tensors on the same batches.
# Needs: a CUDA build of PyTorch, NumPy, and the tessera Python package built for this
# machine's python3 (PYTHONPATH=build/<preset>/python). Usage:
#   PYTHONPATH=build/release/python bench/gpu/run_h200.sh [tiles per measurement, default 2048]
set -euo pipefail
TILES=${1:-2048}
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-gpu-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 77)' || { echo "no CUDA device: nothing to measure"; exit 77; }

cat > "$WORK/gpu_net.py" <<'PYEOF'
import torch, torch.nn as nn
from tessera import batch_handler
from tessera import torch as tt

class Block(nn.Module):
    def __init__(s, c, stride):
        super().__init__()
        o = c * stride
        s.a = nn.Sequential(nn.Conv2d(c, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                            nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o))
        s.skip = nn.Identity() if stride == 1 else nn.Sequential(nn.Conv2d(c, o, 1, stride, bias=False), nn.BatchNorm2d(o))
    def forward(s, x):
        return torch.relu(s.a(x) + s.skip(x))

def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
                        Block(32, 1), Block(32, 2), Block(64, 2), Block(128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 2))
    return net.eval().cuda().to(memory_format=torch.channels_last).half()

NET = None
def init():
    global NET
    NET = build()

@batch_handler(assemble=False)
def handle(_, tiles):
    x = tt.to_device(tiles, "cuda", dtype=torch.float16).div_(255)
    with torch.no_grad():
        tt.publish(tiles, NET(x).float())
PYEOF

cd "$WORK"
"$PY" - "$TILES" <<'PYEOF'
import os, sys, time, statistics, numpy as np, torch
import tessera
from tessera import torch as tt
import gpu_net
N = int(sys.argv[1]); EDGE = 224
tiles = np.random.default_rng(1).integers(0, 256, size=(256, EDGE, EDGE, 3), dtype=np.uint8)

def client(window):
    return tessera.Client.embedded(classes=[(4096, 256), (1 << 20, 2048)], n_rings=8, ring_capacity=1024,
                                   worker_window=window, max_in_flight=4096, prefault=True)

# (a) copies: one worker attached in this process, its arena pinned once
c = client(256)
idx, slot, fd = c.add_external_worker("copy")
os.environ.update(TESSERA_ARENA_FD=str(fd), TESSERA_SLOT=str(slot))
w = tessera.Worker.from_env(); c.set_worker_pid(idx, os.getpid())
s = c.open_stream(ordered=False, max_in_flight=256)
for i in range(128):
    b = c.alloc(tiles[i].nbytes); b.array(np.uint8, tiles[i].shape)[...] = tiles[i]; c.submit(s, b)
got = []
while len(got) < 128: got += w.take(128 - len(got), 1.0)
t0 = time.perf_counter(); pinned = tt.pin_arena(w); reg_ms = (time.perf_counter() - t0) * 1e3
def rate(fn, reps=20):
    fn(); torch.cuda.synchronize(); r = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); r.append(128 * tiles[0].nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(r), min(r), max(r)
pageable = [np.array(t) for t in tiles[:128]]
dev = torch.empty((128, EDGE, EDGE, 3), dtype=torch.uint8, device="cuda")
def from_arena(): [dev[i].copy_(torch.from_numpy(t.input), non_blocking=True) for i, t in enumerate(got)]
def from_pageable(): [dev[i].copy_(torch.from_numpy(a), non_blocking=True) for i, a in enumerate(pageable)]
a, p = rate(from_arena), rate(from_pageable)
print(f"(a) arena pinned={pinned} (registration {reg_ms:.0f} ms): {a[0]:.1f} GB/s [{a[1]:.1f}..{a[2]:.1f}]; "
      f"pageable {p[0]:.1f} GB/s [{p[1]:.1f}..{p[2]:.1f}]; ratio {a[0] / p[0]:.1f}x")
for t in got: t.publish(np.zeros(1, np.uint8))
w.close(); c.close()

# (b) tiles/s through Tessera vs in-process, batch 1/32/128
net = gpu_net.build()
for B in (1, 32, 128):
    n = N if B > 1 else min(N, 512)
    c = client(max(64, 2 * B))
    c.start_supervised_pool([sys.executable, "-m", "tessera.worker", "gpu_net:handle", "--batch", str(B), "--init", "gpu_net:init",
                             "--path", os.getcwd()], devices=["0"], ready_timeout=300,
                            env={k: os.environ[k] for k in ("PYTHONPATH", "PATH", "LD_LIBRARY_PATH", "CUDA_HOME") if k in os.environ})
    s = c.open_stream(ordered=False, max_in_flight=4 * max(64, B))
    def through(count):
        sent = done = 0; t0 = time.perf_counter()
        while done < count:
            while sent < count and sent - done < 4 * max(64, B):
                t = tiles[sent % len(tiles)]; b = c.alloc(t.nbytes); b.array(np.uint8, t.shape)[...] = t; c.submit(s, b); sent += 1
            for r in c.poll(512, 0.01):
                assert r.outcome == "completed", r.error
                done += 1
        return count / (time.perf_counter() - t0)
    def inproc(count):
        t0 = time.perf_counter()
        for i in range(0, count, B):
            x = torch.from_numpy(np.stack([tiles[(i + k) % len(tiles)] for k in range(B)])).cuda(non_blocking=True)
            with torch.no_grad():
                net(x.permute(0, 3, 1, 2).half().div_(255)).float().cpu()
        return count / (time.perf_counter() - t0)
    through(min(n, 256)); inproc(min(n, 256))
    tr, ir = [], []
    for _ in range(3):
        tr.append(through(n)); ir.append(inproc(n))
    print(f"(b) batch {B}: Tessera {statistics.median(tr):.0f} tiles/s [{min(tr):.0f}..{max(tr):.0f}], "
          f"in-process {statistics.median(ir):.0f} [{min(ir):.0f}..{max(ir):.0f}], ratio {statistics.median(tr) / statistics.median(ir):.2f}")
    c.close()
PYEOF
