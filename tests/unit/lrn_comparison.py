"""How the LRN's implementations are compared: the fusions each is run in, the inputs, values with input
gradients, and the tolerance relative to the reference's scale."""

import torch

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
"""Largest |fast - reference| allowed, relative to the reference's largest magnitude (measured: 3e-7 in
float32, 6e-16 in float64). Relative to each tensor's scale rather than to each element: an input gradient
is a difference of two terms, and where they nearly cancel any two roundings differ by more than 1e-6
of the tiny result."""

FUSIONS = {"lrn": (False, None), "relu+lrn": (True, None), "relu+lrn+pool": (True, (3, 2)), "lrn+pool 2/2": (False, (2, 2))}


def value_and_grad(f, x: torch.Tensor):
    """f(x) and d(sum(f(x) * w))/dx for a fixed, uneven w."""
    x = x.detach().clone().requires_grad_()
    y = f(x)
    w = torch.linspace(-1, 2, y.numel(), dtype=torch.float64).reshape(y.shape).to(y.dtype)
    (y * w).sum().backward()
    return y.detach(), x.grad


def assert_scaled_close(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=tolerance * want.abs().max().item())


def inputs(dtype: torch.dtype, layout: str, channels: int = 12) -> torch.Tensor:
    torch.manual_seed(2)
    x = torch.randn(2, channels, 13, 11, dtype=dtype) * 30  # alpha * sum ~ k: both terms of D matter
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
