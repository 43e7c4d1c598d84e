"""Where a training step's time goes, by kind of operation (torch.profiler), for any eager network.

Each module's forward runs inside a profiler range named by its kind (forward hooks, so nothing in the
model changes); the backward of an operation is charged to the kind of the forward operation that made
it, matched by autograd's sequence number; the optimiser's step and zero_grad are its own ranges. Every
top-level event is counted once, so the shares add up to the profiled time.
"""

import torch
from torch import nn

from model.lrn import LocalResponseNorm

KINDS = ("lrn", "conv", "pool", "fc", "optimizer", "other")


def kind_of(module: nn.Module) -> str | None:
    if isinstance(module, LocalResponseNorm):
        return "lrn"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        return "pool"
    if isinstance(module, nn.Linear):
        return "fc"
    return None


def _hooks(net: nn.Module) -> list:
    open_ranges = []

    def enter(name):
        def hook(module, args):
            open_ranges.append(torch.profiler.record_function(f"kind:{name}"))
            open_ranges[-1].__enter__()
        return hook

    def leave(module, args, output):
        open_ranges.pop().__exit__(None, None, None)

    handles = []
    for module in net.modules():
        name = kind_of(module)
        if name is not None:
            handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    return handles


def _root(event):
    while event.cpu_parent is not None:
        event = event.cpu_parent
    return event


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def shares(net: nn.Module, step, steps: int = 2) -> dict[str, float]:
    """Milliseconds per step of each kind in KINDS (and "total"), over `steps` calls of step() after one."""
    step()
    handles = _hooks(net)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    finally:
        for handle in handles:
            handle.remove()
    events = prof.events()
    roots = [e for e in events if e.cpu_parent is None]
    kind_of_sequence = {}
    for root in roots:
        if root.name.startswith("kind:"):
            for e in _descendants(root):
                if e.sequence_nr >= 0:
                    kind_of_sequence[e.sequence_nr] = root.name[len("kind:"):]
    totals = dict.fromkeys(KINDS, 0.0)
    for root in roots:
        if root.name.startswith("kind:"):
            kind = root.name[len("kind:"):]
        elif root.name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
            kind = "optimizer"
        elif root.name.startswith("autograd::engine::evaluate_function:"):
            kind = kind_of_sequence.get(root.sequence_nr, "other")
        else:
            kind = "other"
        totals[kind] += root.cpu_time_total / 1000 / steps
    totals["total"] = sum(totals.values())
    return totals
