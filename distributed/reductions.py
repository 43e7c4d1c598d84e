"""The small collectives the loop and its components take part in, each written once: sums over replicas,
a flag raised on any process, one tensor from every tower process, and the checkpoint store's barrier and
first failure. Each returns at once where its group would hold one rank, so one process runs the same code
without collectives. The towers' exchanges are distributed/exchange.py's."""

from typing import Any

import torch
import torch.distributed as dist


def sum_over(t: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`t` summed in place over `group` (the replicas, for the loop's counts); `t` as it is without one."""
    if group is not None:
        dist.all_reduce(t, group=group)
    return t


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on any process of the run (one MAX; NCCL reduces device tensors only)."""
    t = torch.tensor([float(flag)], device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_every_tower(local: dict[int, torch.Tensor], group: dist.ProcessGroup | None) -> dict[int, torch.Tensor]:
    """{tower: tensor} of every tower, given this process's towers' (`local`): with `group` (one tower per
    process) every process of the group must call this, and each gets every tower's tensor."""
    if group is None:
        return dict(local)
    (mine,) = local.values()
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine.contiguous(), group=group)
    return dict(enumerate(gathered))


def barrier() -> None:
    """Wait until every process of the run gets here (a checkpoint's folder is made before any writes into it)."""
    if dist.is_initialized():
        dist.barrier()


def first_failure(mine: Any) -> Any:
    """The first non-None of every process's `mine` (in rank order; picklable values this run made, such
    as (kind, message) of a refusal), or None: so every process raises the same error and none waits in
    a collective for a peer that gave up."""
    if not dist.is_initialized():
        return mine
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return next((f for f in every if f is not None), None)
