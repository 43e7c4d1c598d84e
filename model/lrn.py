"""Local response normalization (PAPER.md, "Local response normalization")."""

import torch
import torch.nn.functional as F
from torch import nn


class LocalResponseNorm(nn.Module):
    """b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta over one tower's maps.

    The paper writes alpha as a plain factor of the sum; Caffe, cuda-convnet2 and
    torch divide it by n. `convention="paper"` keeps the paper's reading by handing
    torch's kernel alpha * n; `"alpha_over_n"` passes alpha through unchanged.
    Applied per tower, so N in the paper's formula is the tower's own map count.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, convention: str) -> None:
        super().__init__()
        self.size, self.beta, self.k = size, beta, k
        self.torch_alpha = alpha * size if convention == "paper" else alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, self.size, self.torch_alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha_sum={self.torch_alpha / self.size:g}, beta={self.beta}, k={self.k}"
