"""Figure 3: the conv1 kernels of each tower, as a PNG, with how colourful each tower's kernels are.

The paper shows the 48 kernels each GPU learned (top three rows GPU 1, bottom three
GPU 2) and notes that one tower's are largely colour-agnostic and the other's
colour-specific. The grid and the colourfulness are training/conv1_figure.py's, which
the trainer logs to TensorBoard at each epoch's end.
"""

from pathlib import Path

import torch
from torchvision.utils import save_image

from files import replacing
from model.alexnet import AlexNet
from training.conv1_figure import colourfulness, conv1_kernels, kernel_grid

PNG_SCALE = 4
"""Each kernel pixel becomes PNG_SCALE x PNG_SCALE in the PNG (11x11 kernels are too small to see)."""
TOWER_GAP = 4
"""White rows between one tower's grid and the next."""


def conv1_figure(kernels: dict[int, torch.Tensor]) -> torch.Tensor:
    """float [3, H, W]: tower 0's grid above tower 1's (TOWER_GAP white rows between), as the paper stacks the GPUs."""
    grids = [kernel_grid(kernels[t]) for t in sorted(kernels)]
    gap = torch.ones(3, TOWER_GAP, grids[0].shape[-1])
    parts = [part for grid in grids for part in (gap, grid)][1:]
    return torch.cat(parts, dim=1)


def save_conv1_figure(model: AlexNet, path: str | Path) -> tuple[Path, dict[int, float]]:
    """Write Figure 3 of the towers this process holds to a PNG; return its path and each tower's colourfulness."""
    kernels = conv1_kernels(model)
    figure = conv1_figure(kernels)
    big = figure.repeat_interleave(PNG_SCALE, dim=1).repeat_interleave(PNG_SCALE, dim=2)
    with replacing(path) as out:
        save_image(big, out, format="png")
    return Path(path), {t: colourfulness(w) for t, w in kernels.items()}
