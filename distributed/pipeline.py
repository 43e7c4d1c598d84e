"""One training step as a pipeline over micro-batches, every exchange in flight while the
next micro-batch computes (a GPipe schedule: all forwards, then all backwards).

Forward runs stage by stage (model/alexnet.py STAGES); within a stage, micro-batch
i+1 computes while micro-batch i's all-gather travels. Backward is driven here,
stage by stage in reverse: each stage's input is a detached leaf, so its gradient
can be sent (reduce-scatter, the gather's dual) while the next micro-batch's
backward computes. With replicas, a stage's parameter gradients are all-reduced
across replicas as soon as every micro-batch has passed that stage, under the
backward of the stages before it.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from distributed.metrics import topk_wrong
from model.alexnet import STAGE_LAYERS, STAGES, AlexNet


class PipelinedStep:
    """Forward and backward of one batch, cut into micro-batches, for the towers this process holds."""

    def __init__(self, model: AlexNet, exchange, replica_group: dist.ProcessGroup | None) -> None:
        self.model, self.exchange, self.replica_group = model, exchange, replica_group
        towers = list(model.towers.values())
        self.stage_params = [
            [p for t in towers for name in names for p in getattr(t, name).parameters()] for names in STAGE_LAYERS
        ]

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor, micro_batches: int, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate d(mean loss over the batch)/d(params) into .grad; returns (summed loss, wrong top-1/5)."""
        if micro_batches == 1 and self.exchange.in_process and self.replica_group is None:
            return self._whole_batch(inputs, labels, autocast)
        xs, ys = inputs.chunk(micro_batches), labels.chunk(micro_batches)
        m, towers = len(xs), len(self.model.towers)
        leaves = [[None] * m for _ in range(STAGES)]  # each stage's exchanged input, a leaf that collects its grad
        outputs = [[None] * m for _ in range(STAGES)]  # this process's towers' outputs of each stage
        pending = [None] * m

        for k in range(STAGES):
            for i in range(m):
                x = xs[i] if k == 0 else pending[i].wait().detach().requires_grad_()
                leaves[k][i] = x
                with autocast():
                    outputs[k][i] = self.model.stage(k, x)
                last = k == STAGES - 1
                pending[i] = self.exchange.start_sum(outputs[k][i]) if last else self.exchange.start_gather(outputs[k][i])

        loss_sum = torch.zeros((), device=inputs.device)
        wrong = torch.zeros(2, device=inputs.device)
        grads = [None] * m
        for i in range(m):
            logits = pending[i].wait().detach().requires_grad_()
            loss = F.cross_entropy(logits.float(), ys[i], reduction="sum")
            (loss / len(labels)).backward()
            # FC8's partial logits were summed, so every tower's part receives the logits' gradient.
            grads[i] = [logits.grad] * towers
            loss_sum += loss.detach()
            wrong += topk_wrong(logits.detach(), ys[i])

        replica_sync = []
        for k in reversed(range(STAGES)):
            for i in range(m):
                parts = grads[i] if k == STAGES - 1 else pending[i].wait()
                torch.autograd.backward(outputs[k][i], parts)
                outputs[k][i] = None  # this micro-batch's stage graph is spent
                if k > 0:
                    pending[i] = self.exchange.start_gather_grad(leaves[k][i].grad, towers)
            replica_sync.append(self._start_replica_mean(self.stage_params[k]))
        for finish in replica_sync:
            finish()
        return loss_sum, wrong

    def _whole_batch(self, inputs: torch.Tensor, labels: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """Nothing to overlap (both towers here, one micro-batch, no replicas): one forward and one
        backward through autograd: the same arithmetic and dropout draws as the staged schedule,
        without the per-stage bookkeeping whose host time a GPU would wait on (docs/BENCHMARKS.md)."""
        with autocast():
            logits = self.model(inputs)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (loss / len(labels)).backward()
        return loss.detach(), topk_wrong(logits.detach(), labels)

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
