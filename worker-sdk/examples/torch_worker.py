"""Example Python worker (PyTorch, CPU): a tiny conv net producing a uint8 tissue mask.

  uint8 RGB (H, W, 3) -> uint8 mask (H, W), 255 where the net says "tissue".

The weights are fixed by a formula (no download, no RNG), so any process builds the
same net; torch runs single-threaded so results are reproducible.

Run by the broker:
  python3 -m tessera.worker torch_worker:handler --init torch_worker:init --path worker-sdk/examples
"""

import warnings

import numpy as np
import torch

# torch.from_numpy warns on read-only arrays (tile inputs are); we never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_NET = None


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


def init() -> None:
    """Loads the model before the worker reports ready."""
    global _NET
    _NET = build_net()


def infer(net: torch.nn.Module, rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 mask tensor (H, W)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    with torch.no_grad():
        logit = net(x)[0, 0]
    return (logit > 0).to(torch.uint8).mul_(255)


def handler(tile_input: np.ndarray, tile):
    if _NET is None:
        init()
    if tile_input.dtype != np.uint8 or tile_input.ndim != 3 or tile_input.shape[2] != 3:
        raise ValueError(f"torch mask needs uint8 (H, W, 3), got {tile_input.dtype} {tile_input.shape}")
    out = tile.output(np.uint8, tile_input.shape[:2])
    torch.from_numpy(out).copy_(infer(_NET, tile_input))   # written in place into the arena block
    return out
