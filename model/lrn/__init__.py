"""Local response normalization (PAPER.md, "Local response normalization"): one public name, the module.

`LocalResponseNorm` runs one of three implementations of the one formula, each forward and backward: the C++
kernel (ops.py, csrc/), its pure-torch twin (twin.py) and F.local_response_norm (reference.py). Why three, and
how each computes: docs/KERNELS.md.
"""

from model.lrn.norm import LocalResponseNorm

__all__ = ["LocalResponseNorm"]
