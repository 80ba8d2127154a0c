#!/usr/bin/python3
"""The WSInfer-style peer of `tessera overlay`: a PyTorch DataLoader
(num_workers = cores, batch_size = 32) whose workers read tiles with openslide-python,
and the model (the same tissue mask as the example worker: mean of R, G, B < 200) in
the main process. Prints one JSON line. Tissue detection (--tissue) uses the same rule
as tessera's: on the coarsest level where a tile covers >= 4x4 pixels, a pixel is tissue
when its mean is < 225 or its saturation (max - min) > 25; tiles within one thumbnail
pixel of tissue are read."""
import argparse
import json
import math
import os
import resource
import time

t_start = time.time()

import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader, Dataset


class Tiles(Dataset):
    def __init__(self, path, coords, tile):
        self.path, self.coords, self.tile = path, coords, tile
        self.slide = None  # opened in each worker

    def __len__(self):
        return len(self.coords)

    def __getitem__(self, i):
        if self.slide is None:
            self.slide = openslide.OpenSlide(self.path)
        x, y = self.coords[i]
        rgba = np.asarray(self.slide.read_region((x, y), 0, (self.tile, self.tile)))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255  # outside the slide: white, as tessera's readers return it
        return torch.from_numpy(rgb), i


def tissue_tiles(slide, tile, cols, rows):
    best = None
    for level, ds in enumerate(slide.level_downsamples):
        if tile / ds >= 4:
            best = level
    if best is None or best == 0:
        return [(c, r) for r in range(rows) for c in range(cols)]
    ds = slide.level_downsamples[best]
    w, h = slide.level_dimensions[best]
    a = np.asarray(slide.read_region((0, 0), best, (w, h)).convert("RGB")).astype(np.int32)
    tissue = (a.sum(-1) < 3 * 225) | ((a.max(-1) - a.min(-1)) > 25)
    keep = np.zeros((rows, cols), bool)
    for y, x in zip(*np.nonzero(tissue)):
        c0 = max(0, math.floor((x - 1) * ds / tile)); c1 = min(cols - 1, math.ceil((x + 2) * ds / tile) - 1)
        r0 = max(0, math.floor((y - 1) * ds / tile)); r1 = min(rows - 1, math.ceil((y + 2) * ds / tile) - 1)
        keep[r0:r1 + 1, c0:c1 + 1] = True
    return [(c, r) for r in range(rows) for c in range(cols) if keep[r, c]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("slide")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tile", type=int, default=240)
    ap.add_argument("--tissue", action="store_true")
    a = ap.parse_args()
    slide = openslide.OpenSlide(a.slide)
    w, h = slide.dimensions
    cols, rows = math.ceil(w / a.tile), math.ceil(h / a.tile)
    cells = tissue_tiles(slide, a.tile, cols, rows) if a.tissue else [(c, r) for r in range(rows) for c in range(cols)]
    coords = [(c * a.tile, r * a.tile) for c, r in cells]
    loader = DataLoader(Tiles(a.slide, coords, a.tile), batch_size=a.batch, num_workers=a.workers)
    t0 = time.time()
    tissue_px = 0
    done = 0
    with torch.no_grad():
        for batch, idx in loader:
            mask = (batch.float().mean(-1) < 200).to(torch.uint8) * 255  # the model, in the main process
            tissue_px += int((mask != 0).sum())
            done += len(idx)
    t1 = time.time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"tiles": cols * rows, "read": done, "skipped": cols * rows - done, "seconds": t1 - t0,
                      "wall_s": t1 - t_start, "tissue_px": tissue_px, "peak_rss_kb": ru.ru_maxrss}))


if __name__ == "__main__":
    main()
