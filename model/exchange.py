"""How the towers' activations meet: one protocol with two faces, and its one-process form.

The *autograd face* (`join`) is what a plain forward calls: the result carries its
backward. The *pipelined face* (`start`, `start_dual`) puts the same exchanges in
flight and leaves the backward to the caller (distributed/pipeline.py drives it stage
by stage): `start_dual` is the backward of `start`. distributed/exchange.py implements
both faces over a process group; `LocalExchange` here, for towers in one process.
"""

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import torch

from model.layers import GATHER, SUM


class Pending:
    """An exchange in flight: `wait()` blocks until it lands and returns its result."""

    def __init__(self, work: Any, finish: Callable[[], Any]) -> None:
        self.work, self.finish = work, finish

    @staticmethod
    def done(value: Any) -> "Pending":
        return Pending(None, lambda: value)

    @torch.no_grad()  # gloo finishes some collectives by copying into views of the output here
    def wait(self) -> Any:
        if self.work is not None:
            self.work.wait()
        return self.finish()


class Exchange(ABC):
    """`parts` holds this process's towers' tensors, in tower order."""

    in_process: bool
    """Whether every tower lives in this process (nothing travels; nothing to overlap)."""

    waits_on_stream: bool = False
    """Whether `Pending.wait()` only makes the current CUDA stream wait (NCCL) rather than blocking the host."""

    @abstractmethod
    def join(self, kind: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """GATHER: all towers' tensors concatenated along dim 1, in tower order; SUM: their sum.
        Differentiable: the backward is `start_dual`'s."""

    def start(self, kind: str, parts: Sequence[torch.Tensor]) -> Pending:
        """`join` in flight, outside autograd; resolves to the joined tensor."""
        return self._start_gather(parts) if kind == GATHER else self._start_sum(parts)

    def start_dual(self, kind: str, grad: torch.Tensor, count: int) -> Pending:
        """The backward of `start(kind)`, in flight: resolves to the gradient of each of the `count` parts.

        GATHER: the towers used the gathered activations with *different* weights, so a part's
        gradient is the sum of what every tower sends back for its slice (a reduce-scatter, not
        a split). SUM: every tower computes the same loss from the same summed logits, so each
        part's gradient is the logits' gradient itself (the identity).
        """
        if kind == SUM:
            return Pending.done([grad] * count)
        return self._start_gather_dual(grad, count)

    @abstractmethod
    def _start_gather(self, parts: Sequence[torch.Tensor]) -> Pending: ...

    @abstractmethod
    def _start_sum(self, parts: Sequence[torch.Tensor]) -> Pending: ...

    @abstractmethod
    def _start_gather_dual(self, grad: torch.Tensor, count: int) -> Pending: ...


class LocalExchange(Exchange):
    """Every tower in this process: a gather is a concatenation, a sum a sum, and both land at once."""

    in_process = True

    def join(self, kind: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if kind == GATHER:
            return torch.cat(tuple(parts), dim=1)
        return torch.stack(tuple(parts)).sum(0) if len(parts) > 1 else parts[0]

    def _start_gather(self, parts: Sequence[torch.Tensor]) -> Pending:
        return Pending.done(self.join(GATHER, parts))

    def _start_sum(self, parts: Sequence[torch.Tensor]) -> Pending:
        return Pending.done(self.join(SUM, parts))

    def _start_gather_dual(self, grad: torch.Tensor, count: int) -> Pending:
        return Pending.done(list(grad.chunk(count, dim=1)))
