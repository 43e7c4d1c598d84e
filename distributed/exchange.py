"""Activations crossing towers, each collective wrapped once with its dual in backward.

The towers use the gathered activations with *different* weights, so the gradient
reaching one tower's slice is the sum of what every tower sends back: the dual of
the all-gather is a reduce-scatter, not a split. FC8's partial logits are summed
and every tower then computes the same loss from the same logits, so the dual of
that all-reduce is the identity.
"""

import time
import warnings
from typing import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from model.alexnet import LocalExchange

# torch 2.14 renames these collectives (*_single) and warns on every first use; the old
# names are the ones torch 2.11 (our floor) has, so we keep them and drop the warning.
warnings.filterwarnings("ignore", r".*(all_gather_into_tensor|reduce_scatter_tensor).*deprecated", FutureWarning)


def _to_rank_major(x: torch.Tensor, world: int) -> torch.Tensor:
    """[B, world*C, ...] -> [world*B, C, ...]: one contiguous block per rank."""
    return torch.stack(x.chunk(world, dim=1)).flatten(0, 1).contiguous()


def _from_rank_major(x: torch.Tensor, world: int) -> torch.Tensor:
    """[world*B, C, ...] -> [B, world*C, ...]: blocks side by side along channels."""
    return torch.cat(x.chunk(world, dim=0), dim=1)


class ExchangeClock:
    """Host seconds spent inside exchange collectives, forward and backward.

    Exact for gloo, whose collectives block; on NCCL it counts only the launches
    unless the caller synchronises, so it is read on log steps only.
    """

    def __init__(self) -> None:
        self.forward = 0.0
        self.backward = 0.0

    def reset(self) -> None:
        self.forward = self.backward = 0.0


class _GatherChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, exchange: "ProcessGroupExchange") -> torch.Tensor:
        ctx.exchange = exchange
        return exchange.start_gather([local]).wait()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (local,) = ctx.exchange.start_gather_grad(grad, 1).wait()
        return local, None


class _SumAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, exchange: "ProcessGroupExchange") -> torch.Tensor:
        return exchange.start_sum([local]).wait()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class Pending:
    """An exchange in flight. `wait()` blocks until it lands and returns its result; the
    blocked time is the *exposed* exchange time, charged to `clock`."""

    def __init__(self, work, finish, clock: ExchangeClock, direction: str) -> None:
        self.work, self.finish, self.clock, self.direction = work, finish, clock, direction

    @torch.no_grad()  # gloo finishes some collectives by copying into views of the output here
    def wait(self):
        start = time.perf_counter()
        if self.work is not None:
            self.work.wait()
        result = self.finish()
        elapsed = time.perf_counter() - start
        setattr(self.clock, self.direction, getattr(self.clock, self.direction) + elapsed)
        return result


class ProcessGroupExchange:
    """One tower per process: the exchange runs over the replica's tower group.

    `staged`: the tower processes share a GPU over gloo (NCCL refuses two ranks on one
    device). gloo's CUDA support does not reach every collective used here, so in that
    mode alone each exchange is copied to host memory, sent, and copied back: correct,
    and slower than NCCL between two GPUs.
    """

    in_process = False

    def __init__(self, group: ProcessGroup, staged: bool = False) -> None:
        self.group, self.staged = group, staged
        self.clock = ExchangeClock()

    def gather(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """forward: all-gather along dim 1 in rank order; backward: reduce-scatter (sum)."""
        (local,) = parts
        return _GatherChannels.apply(local, self)

    def sum(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """forward: all-reduce (sum); backward: identity (every rank's loss is the same).

        FC8 split by input sends 1000 partial logits per image instead of gathering
        2048 FC7 activations and computing FC8 twice; see docs/BENCHMARKS.md."""
        (local,) = parts
        return _SumAcrossRanks.apply(local, self)

    # The same exchanges in flight, for the pipelined step (distributed/pipeline.py), which
    # drives backward itself and so calls the duals explicitly; the autograd functions above
    # are these, waited on at once.

    @torch.no_grad()
    def start_gather(self, parts: Sequence[torch.Tensor]) -> Pending:
        """forward: all-gather along dim 1, in flight."""
        (local,) = parts
        world = dist.get_world_size(self.group)
        send = self._out(local.contiguous())
        gathered = send.new_empty((world * send.shape[0], *send.shape[1:]))
        work = dist.all_gather_into_tensor(gathered, send, group=self.group, async_op=True)
        return Pending(work, lambda: _from_rank_major(self._back(gathered, local), world), self.clock, "forward")

    @torch.no_grad()
    def start_gather_grad(self, grad: torch.Tensor, count: int) -> Pending:
        """backward of the gather: reduce-scatter (sum), in flight; resolves to [local grad]."""
        world = dist.get_world_size(self.group)
        blocks = self._out(_to_rank_major(grad, world))
        local = blocks.new_empty((blocks.shape[0] // world, *blocks.shape[1:]))
        work = dist.reduce_scatter_tensor(local, blocks, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return Pending(work, lambda: [self._back(local, grad)], self.clock, "backward")

    @torch.no_grad()
    def start_sum(self, parts: Sequence[torch.Tensor]) -> Pending:
        """forward: all-reduce (sum), in flight. Its backward is the identity."""
        (local,) = parts
        total = self._out(local).clone()
        work = dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return Pending(work, lambda: self._back(total, local), self.clock, "forward")

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.cpu() if self.staged else t

    def _back(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like.device) if self.staged else t


class LocalAsyncExchange(LocalExchange):
    """Both towers in this process: the model's concatenation, and the pipelined step's exchanges done at once."""

    in_process = True

    def __init__(self) -> None:
        self.clock = ExchangeClock()

    def start_gather(self, parts: Sequence[torch.Tensor]) -> Pending:
        return self._done(self.gather(parts))

    def start_gather_grad(self, grad: torch.Tensor, count: int) -> Pending:
        return self._done(list(grad.chunk(count, dim=1)))

    def start_sum(self, parts: Sequence[torch.Tensor]) -> Pending:
        return self._done(self.sum(parts))

    def _done(self, value) -> Pending:
        return Pending(None, lambda: value, self.clock, "forward")
