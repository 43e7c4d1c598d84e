"""The pipelined step (asynchronous exchanges, micro-batches) against plain autograd on the whole batch."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bench.workers import run_workers
from config.model import ModelConfig
from distributed.exchange import ProcessGroupExchange
from distributed.pipeline import PipelinedStep, StepKind
from model.alexnet import AlexNet
from model.exchange import LocalExchange

# Dropout off: the pipeline draws masks stage by stage, the plain pass micro-batch by micro-batch.
CFG = ModelConfig(num_classes=10, dropout=0.0)
BATCH = 8


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(BATCH, 3, 227, 227, generator=g) * 40, torch.randint(10, (BATCH,), generator=g)


def _reference() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One process, both towers, synchronous exchange, the whole batch at once: (loss, logits, gradients)."""
    net = AlexNet(CFG)
    net.init_paper(seed=5)
    x, y = _batch()
    logits = net(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (loss / BATCH).backward()
    return loss.detach(), logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def _pipelined(net: AlexNet, exchange, kind: StepKind, micro_batches: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    net.init_paper(seed=5)
    x, y = _batch()
    step = PipelinedStep(net, exchange, None, kind, micro_batches)
    loss, logits = step(x, y, lambda: torch.autocast("cpu", enabled=False))
    return loss, logits, {n: p.grad.clone() for n, p in net.named_parameters()}


def _assert_same(loss, logits, grads, ref_loss, ref_logits, ref_grads):
    """The loss, the logits image by image in the batch's order (the training error is counted on them
    against the batch's labels), and every gradient."""
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5 * ref_logits.abs().max().item())
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        torch.testing.assert_close(grad / scale, ref_grads[name] / scale, rtol=0, atol=2e-5, msg=name)


@pytest.mark.parametrize("kind, micro_batches", [(StepKind.WHOLE, 1), (StepKind.PIPELINED, 2), (StepKind.PIPELINED, 4)])
def test_one_process_micro_batches_equal_the_whole_batch(kind, micro_batches):
    ref_loss, ref_logits, ref_grads = _reference()
    loss, logits, grads = _pipelined(AlexNet(CFG), LocalExchange(), kind, micro_batches)
    assert grads.keys() == ref_grads.keys()
    _assert_same(loss, logits, grads, ref_loss, ref_logits, ref_grads)


def _two_process_worker(rank: int, world: int, out: str) -> None:
    exchange = ProcessGroupExchange(dist.group.WORLD)
    results = {}
    for m in (1, 2, 4):
        net = AlexNet(CFG, tower_indices=(rank,), exchange=exchange)
        results[m] = _pipelined(net, exchange, StepKind.PIPELINED, m)
    torch.save(results, f"{out}/rank{rank}.pt")


def test_two_process_asynchronous_pipeline_equals_synchronous_whole_batch(tmp_path):
    ref_loss, ref_logits, ref_grads = _reference()
    run_workers(2, _two_process_worker, str(tmp_path))
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for m, (loss, logits, grads) in results.items():
            assert all(name.startswith(f"towers.{rank}.") for name in grads)
            _assert_same(loss, logits, grads, ref_loss, ref_logits, {n: ref_grads[n] for n in grads})


DROPOUT = ModelConfig(num_classes=10)  # the paper's dropout 0.5


def _with_dropout(net: AlexNet, step) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's init and dropout generators seeded alike, in training mode, then `step`."""
    net.init_paper(seed=5)
    net.seed_dropout(seed=9)
    net.train()
    x, y = _batch()
    loss, logits = step(net, x, y)
    return loss, logits, {n: p.grad.clone() for n, p in net.named_parameters()}


def _plain(net, x, y):
    logits = net(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (loss / BATCH).backward()
    return loss.detach(), logits.detach()


def _dropout_worker(rank: int, world: int, out: str) -> None:
    exchange = ProcessGroupExchange(dist.group.WORLD)
    net = AlexNet(DROPOUT, tower_indices=(rank,), exchange=exchange)
    no_autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    result = _with_dropout(net, lambda n, x, y: PipelinedStep(n, exchange, None, StepKind.PIPELINED, 1)(x, y, no_autocast))
    torch.save(result, f"{out}/rank{rank}.pt")


def test_two_process_pipeline_with_dropout_equals_the_plain_forward(tmp_path):
    """Dropout on: each tower draws its masks from its own generator, so the pipelined step in two
    processes equals one process's plain forward and backward with the same seeds. (A step that
    left dropout off would differ in every FC gradient.)"""
    ref_loss, ref_logits, ref_grads = _with_dropout(AlexNet(DROPOUT), _plain)
    *_, no_dropout = _with_dropout(AlexNet(DROPOUT), lambda n, x, y: _plain(n.eval(), x, y))
    assert (no_dropout["towers.0.fc7.weight"] - ref_grads["towers.0.fc7.weight"]).abs().max() > 1e-3 * ref_grads[
        "towers.0.fc7.weight"].abs().max()
    run_workers(2, _dropout_worker, str(tmp_path))
    for rank in range(2):
        loss, logits, grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        _assert_same(loss, logits, grads, ref_loss, ref_logits, {n: ref_grads[n] for n in grads})
