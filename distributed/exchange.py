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
    def forward(ctx, local: torch.Tensor, group: ProcessGroup, clock: ExchangeClock) -> torch.Tensor:
        ctx.group, ctx.clock = group, clock
        start = time.perf_counter()
        world = dist.get_world_size(group)
        gathered = local.new_empty((world * local.shape[0], *local.shape[1:]))
        dist.all_gather_into_tensor(gathered, local.contiguous(), group=group)
        clock.forward += time.perf_counter() - start
        return _from_rank_major(gathered, world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        start = time.perf_counter()
        world = dist.get_world_size(ctx.group)
        blocks = _to_rank_major(grad, world)
        local = blocks.new_empty((blocks.shape[0] // world, *blocks.shape[1:]))
        dist.reduce_scatter_tensor(local, blocks, op=dist.ReduceOp.SUM, group=ctx.group)
        ctx.clock.backward += time.perf_counter() - start
        return local, None, None


class _SumAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, group: ProcessGroup, clock: ExchangeClock) -> torch.Tensor:
        start = time.perf_counter()
        total = local.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        clock.forward += time.perf_counter() - start
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def gather_channels(local: torch.Tensor, group: ProcessGroup, clock: ExchangeClock) -> torch.Tensor:
    """forward: all-gather along dim 1 in rank order; backward: reduce-scatter (sum)."""
    return _GatherChannels.apply(local, group, clock)


def sum_across_ranks(local: torch.Tensor, group: ProcessGroup, clock: ExchangeClock) -> torch.Tensor:
    """forward: all-reduce (sum); backward: identity (every rank's loss is the same)."""
    return _SumAcrossRanks.apply(local, group, clock)


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
    """One tower per process: the exchange runs over the replica's tower group."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group
        self.clock = ExchangeClock()

    def gather(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        (local,) = parts
        return gather_channels(local, self.group, self.clock)

    def sum(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        # FC8 split by input sends 1000 partial logits per image instead of gathering
        # 2048 FC7 activations and computing FC8 twice; see docs/BENCHMARKS.md.
        (local,) = parts
        return sum_across_ranks(local, self.group, self.clock)

    # The same exchanges issued asynchronously, for the pipelined step (distributed/pipeline.py),
    # which drives backward itself and so calls the duals explicitly.

    @torch.no_grad()
    def start_gather(self, parts: Sequence[torch.Tensor]) -> Pending:
        """forward: all-gather along dim 1, in flight."""
        (local,) = parts
        world = dist.get_world_size(self.group)
        gathered = local.new_empty((world * local.shape[0], *local.shape[1:]))
        work = dist.all_gather_into_tensor(gathered, local.contiguous(), group=self.group, async_op=True)
        return Pending(work, lambda: _from_rank_major(gathered, world), self.clock, "forward")

    @torch.no_grad()
    def start_gather_grad(self, grad: torch.Tensor, count: int) -> Pending:
        """backward of the gather: reduce-scatter (sum), in flight; resolves to [local grad]."""
        world = dist.get_world_size(self.group)
        blocks = _to_rank_major(grad, world)
        local = blocks.new_empty((blocks.shape[0] // world, *blocks.shape[1:]))
        work = dist.reduce_scatter_tensor(local, blocks, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return Pending(work, lambda: [local], self.clock, "backward")

    @torch.no_grad()
    def start_sum(self, parts: Sequence[torch.Tensor]) -> Pending:
        """forward: all-reduce (sum), in flight. Its backward is the identity."""
        (local,) = parts
        total = local.clone()
        work = dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return Pending(work, lambda: total, self.clock, "forward")


class LocalAsyncExchange:
    """Both towers in this process: the pipelined step's exchanges, done at once."""

    def __init__(self) -> None:
        self.local = LocalExchange()
        self.clock = ExchangeClock()

    def start_gather(self, parts: Sequence[torch.Tensor]) -> Pending:
        return self._done(self.local.gather(parts))

    def start_gather_grad(self, grad: torch.Tensor, count: int) -> Pending:
        return self._done(list(grad.chunk(count, dim=1)))

    def start_sum(self, parts: Sequence[torch.Tensor]) -> Pending:
        return self._done(self.local.sum(parts))

    def _done(self, value) -> Pending:
        return Pending(None, lambda: value, self.clock, "forward")
