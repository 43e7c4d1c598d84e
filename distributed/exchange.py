"""The towers' exchanges over a process group: each collective written once, both faces built on it.
Three primitives (Megatron-LM's tensor_parallel/mappings.py shape): the all-gather along channels, its dual
the reduce-scatter, and the all-reduce of FC8's partial logits. `ProcessGroupExchange` implements
model/exchange.py's protocol with them, in flight (the pipelined face) or waited on in autograd (`_Join`,
the protocol's dual in backward); `for_layout` picks the exchange for a process."""

from typing import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from distributed.layout import Layout
from model.exchange import Exchange, LocalExchange, Pending

# torch 2.14 renames the two tensor collectives (the old names warn that they are deprecated); torch 2.11, the
# floor and the GPU image's version, has only the old ones. Picked by what this torch has, not by its version.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _to_rank_major(x: torch.Tensor, world: int) -> torch.Tensor:
    """[B, world*C, ...] -> [world*B, C, ...]: one contiguous block per rank."""
    return torch.stack(x.chunk(world, dim=1)).flatten(0, 1).contiguous()


def _from_rank_major(x: torch.Tensor, world: int) -> torch.Tensor:
    """[world*B, C, ...] -> [B, world*C, ...]: blocks side by side along channels."""
    return torch.cat(x.chunk(world, dim=0), dim=1)


class ProcessGroupExchange(Exchange):
    """One tower per process: the exchange runs over the replica's tower group.

    `via_host`: the tower processes share a GPU over gloo (NCCL refuses two ranks on one
    device). gloo's CUDA support does not reach every collective used here, so in that
    mode alone each exchange is copied to host memory, sent, and copied back: correct,
    and slower than NCCL between two GPUs.
    """

    in_process = False

    def __init__(self, group: ProcessGroup, via_host: bool = False) -> None:
        self.group, self.via_host = group, via_host
        self.world = dist.get_world_size(group)
        self.waits_on_stream = dist.get_backend(group) == dist.Backend.NCCL

    def join(self, kind: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        (local,) = parts
        return _Join.apply(local, self, kind)

    @torch.no_grad()
    def _start_gather(self, parts: Sequence[torch.Tensor]) -> Pending:
        """All-gather along dim 1, in rank order."""
        (local,) = parts
        send = self._out(local.contiguous())
        gathered = send.new_empty((self.world * send.shape[0], *send.shape[1:]))
        work = _all_gather(gathered, send, group=self.group, async_op=True)
        return Pending(work, lambda: _from_rank_major(self._back(gathered, local), self.world))

    @torch.no_grad()
    def _start_gather_dual(self, grad: torch.Tensor, count: int) -> Pending:
        """Reduce-scatter (sum) along dim 1; resolves to [this tower's gradient]."""
        blocks = self._out(_to_rank_major(grad, self.world))
        local = blocks.new_empty((blocks.shape[0] // self.world, *blocks.shape[1:]))
        work = _reduce_scatter(local, blocks, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return Pending(work, lambda: [self._back(local, grad)])

    @torch.no_grad()
    def _start_sum(self, parts: Sequence[torch.Tensor]) -> Pending:
        """All-reduce (sum). FC8 split by input sends 1000 partial logits per image instead of
        gathering 2048 FC7 activations and computing FC8 twice (docs/BENCHMARKS.md)."""
        (local,) = parts
        total = self._out(local).clone()
        work = dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return Pending(work, lambda: self._back(total, local))

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.cpu() if self.via_host else t

    def _back(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like.device) if self.via_host else t


class _Join(torch.autograd.Function):
    """The autograd face: forward is the exchange, waited on at once; backward its dual."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, exchange: ProcessGroupExchange, kind: str) -> torch.Tensor:
        ctx.exchange, ctx.kind = exchange, kind
        return exchange.start(kind, [local]).wait()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (local,) = ctx.exchange.start_dual(ctx.kind, grad, 1).wait()
        return local, None, None


def for_layout(layout: Layout | None) -> Exchange:
    """How this process's towers meet the others': over its tower group, or within the process
    (no layout: one process holding every tower, as the result commands run)."""
    if layout is None or layout.tower_group is None:
        return LocalExchange()
    return ProcessGroupExchange(layout.tower_group, via_host=layout.plan.exchanges_via_host)
