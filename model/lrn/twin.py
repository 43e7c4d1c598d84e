"""LRN in plain torch operations, with its backward written out: the C++ kernel's twin, tested equal to it, and
what runs wherever the kernel does not (CUDA, a machine that cannot build it). Its formulas: docs/KERNELS.md.
"""

import torch
import torch.nn.functional as F


def window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out_c = sum_{j=c-before}^{c+after} t_j over dim 1, zero beyond the edges: n shifted views added."""
    padded = F.pad(t, (0, 0, 0, 0, before, after))
    channels = t.shape[1]
    out = padded[:, 0:channels]
    for shift in range(1, before + after + 1):
        out = out + padded[:, shift : shift + channels]
    return out


def _computing_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype`, converted only when it differs: torch 2.11's Dynamo gives the input a zero gradient when
    an autograd.Function's forward returns the no-op `t.to(t.dtype)` (tests/unit/test_lrn_paths.py)."""
    return t if t.dtype == dtype else t.to(dtype)


def _denominator(x: torch.Tensor, size: int, alpha: float, k: float) -> torch.Tensor:
    return window_sum(x * x, size // 2, (size - 1) // 2).mul_(alpha).add_(k)


class _LRN(torch.autograd.Function):
    """S_c = sum_{j=c-before}^{c+after} x_j^2,   D_c = k + alpha S_c,   y_c = x_c D_c^-beta
    dL/dx_c = g_c D_c^-beta - 2 alpha beta x_c sum_{i=c-after}^{c+before} g_i y_i / D_i

    before = size // 2, after = (size - 1) // 2 (F.local_response_norm's window), channels outside the tensor
    left out. Only x is saved: the backward recomputes D. Half and bfloat16 are computed in float32, rounded once.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.hyper = size, alpha, beta, k
        with torch.autocast(x.device.type, enabled=False):
            xa = x.to(_computing_dtype(x.dtype))
            return _rounded(xa * _denominator(xa, size, alpha, k).pow_(-beta), x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        size, alpha, beta, k = ctx.hyper
        with torch.autocast(x.device.type, enabled=False):
            xa, ga = x.to(_computing_dtype(x.dtype)), grad.to(_computing_dtype(x.dtype))
            d = _denominator(xa, size, alpha, k)
            gp = ga * d.pow(-beta)
            cross = window_sum(gp * xa / d, (size - 1) // 2, size // 2)
            dx = gp - (2 * alpha * beta) * xa * cross
        return _rounded(dx, x.dtype), None, None, None, None


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """y = x (k + alpha sum_window x^2)^-beta over dim 1 (alpha multiplies the plain sum)."""
    return _LRN.apply(x, size, alpha, beta, k)


def relu_lrn_pool(z: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool,
                  pool_kernel: int, pool_stride: int) -> torch.Tensor:
    """max_pool2d(lrn(relu(z))) (each step optional), as the C++ kernel fuses them."""
    x = F.relu(z) if relu else z
    y = lrn(x, size, alpha, beta, k)
    return F.max_pool2d(y, pool_kernel, pool_stride) if pool_kernel else y
