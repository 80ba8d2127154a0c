"""Per-tile vs batched torch inference through Tessera, against the same model run in
this process on the same batches (the torch example's net, CPU, one thread each).

Configurations (each measured `--reps` times, interleaved, so that load from other
processes on the machine hits all of them alike):
  tessera/per-tile     python3 -m tessera.worker torch_worker:handler (one forward pass per tile)
  tessera/batch-B      python3 -m tessera.worker torch_worker:handle_batch --batch B
  in-process/batch-B   the same net on B stacked tiles, no Tessera

Prints one JSON object per configuration: tiles/s (median of the repetitions, min, max).
Run by `tessera bench --filter torch` (needs PYTHONPATH with the tessera package and the
examples, which tessera-bench sets).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--tile", type=int, default=256, help="tile edge (RGB uint8)")
    p.add_argument("--tiles", type=int, default=256, help="tiles per measurement")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--max-wait", type=float, default=0.002)
    p.add_argument("--lead-in", type=int, default=128,
                   help="untimed tiles run by each configuration right before each of its timed repetitions")
    p.add_argument("--host-submit", choices=("array", "per-tile"), default="array",
                   help="array: Client.submit_array per chunk of tiles (native loop); per-tile: alloc, fill and "
                        "submit each tile from Python")
    return p.parse_args()


def make_tiles(n, edge, seed=5):
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, size=(n, edge, edge, 3), dtype=np.uint8)
    tiles[:, :, : edge // 2] //= 3
    return tiles


def check_mask(config, index, mask, ref):
    """`mask` must equal the per-tile mask, except where the per-tile logit is within
    float rounding of the threshold (a different convolution code path may round the
    other way there)."""
    mask_ref, logit = ref
    bad = (mask != mask_ref) & (np.abs(logit) > 1e-4)
    if bad.any():
        raise RuntimeError(f"{config}: tile {index} differs from the per-tile mask at {np.argwhere(bad)[:4].tolist()}")


class TesseraConfig:
    def __init__(self, name, argv, tile_bytes, mask_bytes, window, host_submit):
        import tessera

        self.name = name
        self.host_submit = host_submit
        self.client = tessera.Client.embedded(
            classes=[(4096, 256), (max(65536, mask_bytes), 512), (max(262144, tile_bytes), 512)],
            n_rings=8, ring_capacity=512, worker_window=window, max_in_flight=1024, spin_us=50)
        self.client.start_unsupervised_pool(argv, count=1, env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                                            stderr=sys.stderr, ready_timeout=120)
        self.stream = self.client.open_stream(ordered=False, max_in_flight=2 * window)
        self.window = 2 * window

    def measure(self, tiles, check):
        client, s = self.client, self.stream
        n = len(tiles)
        t0 = time.perf_counter()
        sent = done = 0
        while done < n:
            if self.host_submit == "array":
                k = min(n - sent, self.window - (sent - done))
                if k > 0:
                    sent += len(client.submit_array(s, tiles[sent:sent + k], x=range(sent, sent + k)))
            while self.host_submit == "per-tile" and sent < n and sent - done < self.window:
                block = client.alloc(tiles[sent].nbytes)
                block.array(np.uint8, tiles[sent].shape)[...] = tiles[sent]
                client.submit(s, block, x=sent)
                sent += 1
            for r in client.poll(256, 0.05):
                if r.outcome != "completed":
                    raise RuntimeError(f"{self.name}: tile {r.x} {r.outcome}: {r.error}")
                if check is not None and r.x in check:
                    check_mask(self.name, r.x, r.output, check[r.x])
                done += 1
        return n / (time.perf_counter() - t0)

    def close(self):
        self.client.close()


class InProcessConfig:
    def __init__(self, name, batch):
        import torch
        from tessera_examples import torch_worker

        self.name, self.batch, self.torch = name, batch, torch
        self.net = torch_worker.build_net()
        self.infer_batch = torch_worker.infer_batch

    def measure(self, tiles, check):
        torch = self.torch
        n = len(tiles)
        t0 = time.perf_counter()
        for i in range(0, n, self.batch):
            x = torch.from_numpy(np.stack(tiles[i:i + self.batch])).permute(0, 3, 1, 2).float()
            masks = self.infer_batch(self.net, x).numpy()
            for k in range(len(masks)) if check is not None else ():
                if i + k in check:
                    check_mask(self.name, i + k, masks[k], check[i + k])
        return n / (time.perf_counter() - t0)

    def close(self):
        pass


def main():
    a = parse()
    import torch  # noqa: F401 - fail early (the caller reports a skip)
    from tessera.allocator import keep_freed_memory

    # The same allocator settings as the Tessera workers get from `python3 -m tessera.worker`,
    # so the in-process baseline is not measuring page faults the workers no longer take.
    keep_freed_memory()
    from tessera_examples import torch_worker

    batches = [int(b) for b in a.batches.split(",") if b]
    tiles = make_tiles(a.tiles, a.tile)  # (n, edge, edge, 3); the in-process loop stacks slices of it
    net = torch_worker.build_net()
    check = [(torch_worker.infer(net, t).numpy(), torch_worker.logits(net, t)) for t in tiles[:16]]
    base = [sys.executable, "-m", "tessera.worker"]
    init = ["--init", "tessera_examples.torch_worker:init"]
    edge = a.tile
    configs = [TesseraConfig("tessera/per-tile", base + ["tessera_examples.torch_worker:handler"] + init,
                             edge * edge * 3, edge * edge, 64, a.host_submit)]
    for b in batches:
        configs.append(TesseraConfig(f"tessera/batch-{b}", base + ["tessera_examples.torch_worker:handle_batch", "--batch", str(b),
                                                                   "--max-wait", str(a.max_wait)] + init,
                                     edge * edge * 3, edge * edge, max(64, 2 * b), a.host_submit))
        configs.append(InProcessConfig(f"in-process/batch-{b}", b))
    rates = {c.name: [] for c in configs}
    expected = {i: check[i] for i in range(len(check))}  # masks of the first tiles: every config must agree
    try:
        for c in configs:  # warm-up (allocator, first forward passes), with the correctness check
            c.measure(tiles[:64], expected)
        for rep in range(a.reps):
            for c in (configs if rep % 2 == 0 else reversed(configs)):
                # The other configurations ran meanwhile and left this one idle (workers
                # asleep, caches cold); a job pays that once, not once per repetition. An
                # untimed lead-in of a few batches puts every configuration back in its
                # steady state before its timed repetition.
                c.measure(tiles[:a.lead_in], None)
                rates[c.name].append(c.measure(tiles, None))
    finally:
        for c in configs:
            c.close()
    for name, r in rates.items():
        print(json.dumps({"config": name, "tiles_per_s": statistics.median(r), "min": min(r), "max": max(r),
                          "reps": len(r), "tiles": a.tiles, "tile": edge,
                          "host_submit": a.host_submit}), flush=True)


if __name__ == "__main__":
    main()
