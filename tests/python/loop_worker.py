"""A worker that drives the tile loop itself (tessera.Worker.from_env), as a user
script would. op = milliseconds to hold the tile (with an output block allocated)."""

import sys
import time

import numpy as np

import tessera


def main():
    with tessera.Worker.from_env() as worker:
        print("loop_worker: ready", file=sys.stderr, flush=True)
        for batch in worker.tiles(max_batch=4, timeout=0.05):
            for tile in batch:
                out = tile.output(np.uint8, (1,))
                print(f"loop_worker: handling {tile.seq}", file=sys.stderr, flush=True)
                time.sleep(tile.op / 1000.0)
                out[0] = 1
                tile.publish(out)
    print(f"loop_worker: stopped cleanly, pending={worker.pending_tiles}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
