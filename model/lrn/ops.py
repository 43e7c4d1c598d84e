"""The C++ kernel (csrc/lrn.cpp) as the torch ops `alexnet::lrn` and `alexnet::lrn_backward`: custom ops, so
torch.compile calls each as one opaque op and autograd knows the backward. CPU tensors only, and only where the
kernel is built (`kernel_built`), which LocalResponseNorm checks before calling `lrn`.
"""

from pathlib import Path

import torch

from kernels import CppKernel, built

CSRC = Path(__file__).with_name("csrc")
KERNEL = CppKernel("alexnet_lrn", sources=(CSRC / "lrn.cpp",), headers=(CSRC / "lrn_planes.h",),
                   instead="its pure-torch twin (model/lrn/twin.py)")


@torch.compiler.assume_constant_result  # decided once per process; torch.compile need not trace the build
def kernel_built() -> bool:
    """Whether the C++ kernel is built (building it on the first call)."""
    return built(KERNEL) is not None


def _output_like(z: torch.Tensor, pool_kernel: int, pool_stride: int) -> torch.Tensor:
    """An empty output of the op in z's memory layout (the real and the fake kernel both use this)."""
    n, c, h, w = z.shape
    if pool_kernel:
        h, w = (h - pool_kernel) // pool_stride + 1, (w - pool_kernel) // pool_stride + 1
    channels_last = z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((n, c, h, w), dtype=z.dtype, device=z.device, memory_format=layout)


@torch.library.custom_op("alexnet::lrn", mutates_args=(), device_types="cpu")
def lrn(z: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, pool_kernel: int,
        pool_stride: int) -> torch.Tensor:
    """max_pool2d(lrn(relu(z))), each step as its flags say, in one pass over z: `alpha` multiplies the plain sum
    of squares, `pool_kernel` 0 is no pool."""
    out = _output_like(z, pool_kernel, pool_stride)
    built(KERNEL).forward(z, out, size, alpha, beta, k, relu, pool_kernel, pool_stride)
    return out


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=(), device_types="cpu")
def lrn_backward(grad: torch.Tensor, z: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool,
                 pool_kernel: int, pool_stride: int) -> torch.Tensor:
    """The gradient of `lrn`'s output (`grad`) with respect to z, recomputing what the forward computed."""
    dz = torch.empty_like(z)
    built(KERNEL).backward(grad, z, dz, size, alpha, beta, k, relu, pool_kernel, pool_stride)
    return dz


@lrn.register_fake
def _(z, size, alpha, beta, k, relu, pool_kernel, pool_stride):
    return _output_like(z, pool_kernel, pool_stride)


@lrn_backward.register_fake
def _(grad, z, size, alpha, beta, k, relu, pool_kernel, pool_stride):
    return torch.empty_like(z)


def _save_input(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.hyper = inputs[1:]


def _backward(ctx, grad):
    (z,) = ctx.saved_tensors
    return (lrn_backward(grad, z, *ctx.hyper),) + (None,) * len(ctx.hyper)


lrn.register_autograd(_backward, setup_context=_save_input)
