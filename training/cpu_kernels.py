"""The C++ CPU kernels a run uses (the LRN's, the SGD update's), built before its first step rather than in it."""

from model.lrn import LocalResponseNorm
from training.optimizer import one_pass_kernel


def build_cpu_kernels() -> None:
    """Build (or load) both kernels now: a first build takes about a minute each, and where one cannot be built,
    its warning comes before the run starts."""
    LocalResponseNorm.kernel_available()
    one_pass_kernel()
