"""LocalResponseNorm: the paper's LRN as an nn.Module, optionally with the ReLU before it and the max-pool after
it, running the implementation that fits its input (the kernel on CPU where built, else the twin)."""

import torch
from torch import nn

from model.lrn import ops, reference, twin

IMPLEMENTATIONS = ("auto", "kernel", "twin", "reference")
KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class LocalResponseNorm(nn.Module):
    """b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta over one tower's maps.

    The paper writes alpha as a plain factor of the sum; Caffe, cuda-convnet2 and
    torch divide it by n. `convention="paper"` keeps the paper's reading by handing
    torch's kernel alpha * n; `"alpha_over_n"` passes alpha through unchanged.
    Applied per tower, so N in the paper's formula is the tower's own map count.

    With `relu=True` the input is first passed through a ReLU, and with `pool=(kernel, stride)` the
    output through a max-pool, in the same pass: the conv layers' ("act", "lrn", "pool") as one module.
    `implementation`: "kernel", "twin", "reference", or "auto" (the default: the kernel where it applies).
    """

    kernel_available = staticmethod(ops.kernel_built)

    def __init__(self, size: int, alpha: float, beta: float, k: float, convention: str, relu: bool = False,
                 pool: tuple[int, int] | None = None, implementation: str = "auto") -> None:
        super().__init__()
        self.size, self.beta, self.k = size, beta, k
        self.torch_alpha = alpha * size if convention == "paper" else alpha
        self.relu, self.pool = relu, pool
        self.implementation = implementation

    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"LRN implementation {value!r}: must be one of {IMPLEMENTATIONS}")
        self._implementation = value

    @staticmethod
    def set_implementation_in(module: nn.Module, implementation: str) -> None:
        """Every LocalResponseNorm in `module` runs `implementation` ("reference": the network as before the fast
        path)."""
        for each in module.modules():
            if isinstance(each, LocalResponseNorm):
                each.implementation = implementation

    def chosen(self, x: torch.Tensor) -> str:
        """The implementation `forward` runs on x."""
        if self.implementation != "auto":
            return self.implementation
        fits = x.device.type == "cpu" and x.dim() == 4 and x.dtype in KERNEL_DTYPES
        return "kernel" if fits and ops.kernel_built() else "twin"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        way = self.chosen(x)
        kernel, stride = self.pool or (0, 0)
        if way == "reference":
            return reference.relu_lrn_pool(x, self.size, self.torch_alpha, self.beta, self.k, self.relu, kernel, stride)
        # The kernel and the twin take alpha as the factor of the plain sum of squares; torch's averages over size.
        alpha = self.torch_alpha / self.size
        fast = ops.lrn if way == "kernel" else twin.relu_lrn_pool
        return fast(x, self.size, alpha, self.beta, self.k, self.relu, kernel, stride)

    def extra_repr(self) -> str:
        fused = (", relu first" if self.relu else "") + (f", max-pool {self.pool} after" if self.pool else "")
        return f"size={self.size}, alpha_sum={self.torch_alpha / self.size:g}, beta={self.beta}, k={self.k}{fused}"
