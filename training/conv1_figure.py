"""The paper's Figure 3 as training goes: each tower's conv1 kernels, as a grid and as one number, how
colour-specific they are (the paper: one tower's largely colour-agnostic, the other's colour-specific)."""

import torch
from torchvision.utils import make_grid

from model.alexnet import AlexNet

KERNELS_PER_ROW = 16
"""Kernels per row: the paper's Figure 3 is 6 rows of 16, three rows per tower."""


def conv1_kernels(model: AlexNet) -> dict[int, torch.Tensor]:
    """{tower: conv1 weights [kernels, 3, 11, 11]} of the towers `model` holds (detached, where they are;
    distributed/reductions.py `from_every_tower` gathers both when each process holds one)."""
    return {int(k): t.conv1.weight.detach() for k, t in model.towers.items()}


def kernel_grid(kernels: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """float [3, H, W] in [0, 1]: the kernels in rows of KERNELS_PER_ROW, each min-max normalised
    on its own, as in the paper's Figure 3."""
    return make_grid(kernels.float(), nrow=KERNELS_PER_ROW, padding=padding, normalize=True, scale_each=True,
                     pad_value=1.0)


def colourfulness(kernels: torch.Tensor) -> float:
    """Mean over kernels of (std across RGB at each pixel, averaged over pixels) / the kernel's whole std.

    0 for kernels that weigh the three channels alike (colour-agnostic); larger for
    kernels that respond to one colour against another: the paper notes one tower's
    conv1 kernels are largely colour-agnostic and the other's colour-specific.
    """
    k = kernels.double()
    across_rgb = k.std(dim=1, unbiased=False).mean(dim=(1, 2))
    overall = k.flatten(1).std(dim=1, unbiased=False)
    return (across_rgb / overall.clamp_min(1e-12)).mean().item()
