"""Figure 3: the conv1 kernels of each tower, and how colourful each tower's kernels are.

The paper shows the 48 kernels each GPU learned (top three rows GPU 1, bottom three
GPU 2) and notes that one tower's are largely colour-agnostic and the other's
colour-specific. Each kernel is min-max normalised on its own, as in the figure.
"""

from pathlib import Path

import torch
import torch.distributed as dist
from torchvision.utils import make_grid, save_image

from distributed.metrics import MetricLogger
from model.alexnet import AlexNet

PER_ROW = 16
"""Kernels per row: the paper's figure is 6 rows of 16, three rows per tower."""
PADDING = 1
PNG_SCALE = 4
"""Each kernel pixel becomes PNG_SCALE x PNG_SCALE in the PNG (11x11 kernels are too small to see)."""


def conv1_kernels(model: AlexNet, tower_group: dist.ProcessGroup | None = None) -> dict[int, torch.Tensor]:
    """{tower: conv1 weights [kernels, 3, 11, 11]} of every tower, on the CPU.

    With `tower_group` (one tower per process) this is a collective: every process of
    the group must call it, and each gets both towers' kernels.
    """
    local = {int(k): t.conv1.weight.detach() for k, t in model.towers.items()}
    if tower_group is None:
        return {k: w.cpu() for k, w in local.items()}
    (mine,) = local.values()
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(tower_group))]
    dist.all_gather(gathered, mine.contiguous(), group=tower_group)
    return {t: w.cpu() for t, w in enumerate(gathered)}


def kernel_grid(kernels: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] in [0, 1]: the kernels in rows of PER_ROW, each min-max normalised on its own."""
    return make_grid(kernels.float(), nrow=PER_ROW, padding=PADDING, normalize=True, scale_each=True, pad_value=1.0)


def colourfulness(kernels: torch.Tensor) -> float:
    """Mean over kernels of (std across RGB at each pixel, averaged over pixels) / the kernel's whole std.

    0 for kernels that weigh the three channels alike (colour-agnostic); larger for
    kernels that respond to one colour against another.
    """
    k = kernels.double()
    across_rgb = k.std(dim=1, unbiased=False).mean(dim=(1, 2))
    overall = k.flatten(1).std(dim=1, unbiased=False)
    return (across_rgb / overall.clamp_min(1e-12)).mean().item()


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
    save_image(big, str(path))
    return Path(path), {t: colourfulness(w) for t, w in kernels.items()}


def log_conv1_kernels(logger: MetricLogger, kernels: dict[int, torch.Tensor], step: int) -> dict[int, float]:
    """Log each tower's kernel grid (`kernels/conv1_tower<t>`) and colourfulness (`kernels/colour_tower<t>`).

    `kernels` comes from `conv1_kernels` (called by every process of the tower group);
    only a logger that is enabled (rank 0) writes anything. Returns the colourfulness.
    """
    colour = {t: colourfulness(w) for t, w in kernels.items()}
    for t, w in kernels.items():
        logger.image(f"kernels/conv1_tower{t}", kernel_grid(w), step)
    logger.scalars(step, {f"kernels/colour_tower{t}": c for t, c in colour.items()})
    return colour
