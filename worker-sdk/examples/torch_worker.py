"""Example Python worker (PyTorch): a tiny conv net producing a uint8 tissue mask.

  uint8 RGB (H, W, 3) -> uint8 mask (H, W), 255 where the net says "tissue".

The weights are fixed by a formula (no download, no RNG), so any process builds the
same net; torch runs single-threaded on the CPU so results are reproducible.

Two handlers over the same net:
  handler       one tile per forward pass, on the CPU
  handle_batch  a batch handler: up to N tiles per forward pass, on the GPU where CUDA
                is present (the arena pinned once, one DMA per tile), else on the CPU

Run by the broker:
  python3 -m tessera.worker torch_worker:handler --init torch_worker:init --path worker-sdk/examples
  python3 -m tessera.worker torch_worker:handle_batch --batch 32 --init torch_worker:init --path worker-sdk/examples
"""

import os
import warnings

import numpy as np
import torch

from tessera import batch_handler
from tessera import torch as tt

# torch.from_numpy warns on read-only arrays (tile inputs are); we never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_NET = None
_DEVICE = torch.device("cpu")


def build_net() -> torch.nn.Module:
    """3x3 conv (3 -> 4 channels) + ReLU + 1x1 conv (4 -> 1): a smoothed darkness detector."""
    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, kernel_size=3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 1, kernel_size=1),
    )
    with torch.no_grad():
        w1 = torch.zeros(4, 3, 3, 3)
        for o in range(4):
            for c in range(3):
                # channel o looks at darkness with a slightly different colour balance
                w1[o, c] = -(1.0 + 0.25 * ((o + c) % 3)) / 27.0
        net[0].weight.copy_(w1)
        net[0].bias.copy_(torch.tensor([0.80, 0.85, 0.90, 0.95]))
        net[2].weight.copy_(torch.tensor([1.0, 0.5, -0.25, 0.75]).view(1, 4, 1, 1))
        net[2].bias.copy_(torch.tensor([-0.85]))
    net.eval()
    return net


def pick_device() -> torch.device:
    """TESSERA_TORCH_DEVICE if set, else the (one) visible CUDA device, else the CPU."""
    name = os.environ.get("TESSERA_TORCH_DEVICE", "")
    if name:
        return torch.device(name)
    return torch.device("cuda") if tt.cuda_usable() else torch.device("cpu")


def init() -> None:
    """Loads the model (onto the worker's device) before the worker reports ready."""
    global _NET, _DEVICE
    _DEVICE = pick_device()
    _NET = build_net().to(_DEVICE)


def infer(net: torch.nn.Module, rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 mask tensor (H, W)."""
    device = next(net.parameters()).device
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    with torch.no_grad():
        logit = net(x)[0, 0]
    return (logit > 0).to(torch.uint8).mul_(255).cpu()


def logits(net: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    """The net's float output for one tile (H, W): the mask is logits > 0."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    with torch.no_grad():
        return net(x)[0, 0].numpy()


def infer_batch(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) with values 0..255 -> uint8 masks (B, H, W); the same arithmetic as infer()."""
    with torch.no_grad():
        logit = net(x.div_(255.0))[:, 0]
    return (logit > 0).to(torch.uint8).mul_(255)


@batch_handler(assemble=False)  # to_device reads each tile's arena block itself
def handle_batch(_, tiles):
    if _NET is None:
        init()
    t0 = tiles[0]
    if t0.dtype != np.uint8 or len(t0.shape) != 3 or t0.shape[2] != 3:
        raise ValueError(f"torch mask needs uint8 (H, W, 3), got {t0.dtype} {t0.shape}")
    x = tt.to_device(tiles, _DEVICE, dtype=torch.float32)   # (B, 3, H, W), one copy per tile
    tt.publish(tiles, infer_batch(_NET, x))                 # one copy per tile into its output block


def handler(tile_input: np.ndarray, tile):
    if _NET is None:
        init()
    if tile_input.dtype != np.uint8 or tile_input.ndim != 3 or tile_input.shape[2] != 3:
        raise ValueError(f"torch mask needs uint8 (H, W, 3), got {tile_input.dtype} {tile_input.shape}")
    out = tile.output(np.uint8, tile_input.shape[:2])
    torch.from_numpy(out).copy_(infer(_NET, tile_input))   # written in place into the arena block
    return out
