"""One training step as a pipeline over micro-batches, every exchange in flight while the
next micro-batch computes (a GPipe schedule: all forwards, then all backwards), stage by stage
(model/layers.py STAGES); with replicas, a stage's gradients are all-reduced under the backward of the
stages before it (the schedule in full: docs/ARCHITECTURE.md, "The step")."""

import time
from enum import Enum

import torch
import torch.distributed as dist
import torch.nn.functional as F

from model.alexnet import AlexNet, Masks
from model.exchange import Exchange, Pending
from model.layers import STAGES

DIRECTIONS = ("forward", "backward")


class StepKind(Enum):
    """How this process runs a training step. Chosen once, where the run is built (training/build.py
    `choose_step`), from the layout and the switches; the pipeline and the trainer follow it."""

    WHOLE = "whole"
    """Every tower in this process, one micro-batch, no replicas: one forward and one backward (`whole_batch`)."""
    PIPELINED = "pipelined"
    """Micro-batches in a GPipe schedule, each exchange in flight under the next micro-batch's work."""
    GRAPHED = "graphed"
    """The whole step over static buffers, replayed as one CUDA graph (training/graphed_step.py)."""


class ExposedTime:
    """Seconds the steps spent waiting for exchanges to land, forward and backward, summed until taken.

    gloo's collectives block the host until they land, so the host's clock times the wait. NCCL's `wait()`
    returns at once, having made the current CUDA stream wait for the collective (`on_stream`): there the
    wait is the GPU time between two events recorded around it, read (a host sync) only when taken, which
    the trainer does on log steps.
    """

    def __init__(self, on_stream: bool) -> None:
        self.on_stream = on_stream
        self._seconds = dict.fromkeys(DIRECTIONS, 0.0)
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {d: [] for d in DIRECTIONS}

    def wait(self, pending: Pending, direction: str):
        if not self.on_stream:
            start = time.perf_counter()
            result = pending.wait()
            self._seconds[direction] += time.perf_counter() - start
            return result
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record()
        result = pending.wait()
        after.record()
        self._events[direction].append((before, after))
        return result

    def take(self) -> tuple[float, float]:
        """(forward, backward) seconds since the last take."""
        for direction, pairs in self._events.items():
            for before, after in pairs:
                after.synchronize()
                self._seconds[direction] += before.elapsed_time(after) / 1000
            pairs.clear()
        taken = tuple(self._seconds[d] for d in DIRECTIONS)
        self._seconds = dict.fromkeys(DIRECTIONS, 0.0)
        return taken


class PipelinedStep:
    """Forward and backward of one batch, cut into micro-batches, for the towers this process holds."""

    def __init__(self, model: AlexNet, exchange: Exchange, replica_group: dist.ProcessGroup | None,
                 kind: StepKind, micro_batches: int) -> None:
        self.model, self.exchange, self.replica_group = model, exchange, replica_group
        self.kind, self.micro_batches = kind, micro_batches
        towers = list(model.towers.values())
        # One gradient bucket per stage, averaged over replicas once every micro-batch has passed it.
        self.stage_params = [
            [p for t in towers for layer in stage.layers for p in getattr(t, layer.name).parameters()] for stage in STAGES
        ]
        self.exposed = ExposedTime(on_stream=exchange.waits_on_stream)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate d(mean loss over the batch)/d(params) into .grad; returns (summed loss, the logits),
        detached, without syncing."""
        if self.kind is not StepKind.PIPELINED:
            return self.whole_batch(inputs, labels, autocast)
        xs, ys = inputs.chunk(self.micro_batches), labels.chunk(self.micro_batches)
        m, towers, wait = len(xs), len(self.model.towers), self.exposed.wait
        leaves = [[None] * m for _ in STAGES]  # each stage's exchanged input, a leaf that collects its grad
        outputs = [[None] * m for _ in STAGES]  # this process's towers' outputs of each stage
        pending = [None] * m

        for k, stage in enumerate(STAGES):
            for i in range(m):
                x = xs[i] if k == 0 else wait(pending[i], "forward").detach().requires_grad_()
                leaves[k][i] = x
                with autocast():
                    outputs[k][i] = self.model.stage(k, x)
                pending[i] = self.exchange.start(stage.exchange, outputs[k][i])

        loss_sum = torch.zeros((), device=inputs.device)
        all_logits = []
        for i in range(m):
            logits = wait(pending[i], "forward").detach().requires_grad_()
            loss = F.cross_entropy(logits.float(), ys[i], reduction="sum")
            (loss / len(labels)).backward()
            pending[i] = self.exchange.start_dual(STAGES[-1].exchange, logits.grad, towers)
            loss_sum += loss.detach()
            all_logits.append(logits.detach())

        replica_sync = []
        for k in reversed(range(len(STAGES))):
            for i in range(m):
                torch.autograd.backward(outputs[k][i], wait(pending[i], "backward"))
                outputs[k][i] = None  # this micro-batch's stage graph is spent
                if k > 0:
                    pending[i] = self.exchange.start_dual(STAGES[k - 1].exchange, leaves[k][i].grad, towers)
            replica_sync.append(self._start_replica_mean(self.stage_params[k]))
        for finish in replica_sync:
            finish()
        return loss_sum, torch.cat(all_logits)

    def whole_batch(
        self, inputs: torch.Tensor, labels: torch.Tensor, autocast, keeps: Masks | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nothing to overlap (both towers here, one micro-batch, no replicas): one forward and one
        backward through autograd: the same arithmetic and dropout draws as the stage-by-stage schedule,
        without the per-stage bookkeeping whose host time a GPU would wait on (docs/BENCHMARKS.md).
        `keeps`: dropout masks drawn beforehand (training/graphed_step.py), else drawn in the forward."""
        with autocast():
            logits = self.model(inputs, keeps)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (loss / len(labels)).backward()
        return loss.detach(), logits.detach()

    def _start_replica_mean(self, params: list[torch.nn.Parameter]):
        """Average these gradients over replicas, in flight; returns the function that lands them."""
        if self.replica_group is None:
            return lambda: None
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        work = dist.all_reduce(flat, group=self.replica_group, async_op=True)
        replicas = dist.get_world_size(self.replica_group)

        def finish() -> None:
            work.wait()
            flat.div_(replicas)
            for g, piece in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(piece.view_as(g))

        return finish
