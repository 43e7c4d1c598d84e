"""The split network (one tower per gloo process) against the one-process network."""

import torch
import torch.distributed as dist

from bench.workers import run_workers
from config.model import ModelConfig
from distributed.exchange import ProcessGroupExchange
from model.alexnet import AlexNet

CFG = ModelConfig(num_classes=20)


def _inputs():
    g = torch.Generator().manual_seed(7)
    return torch.randn(3, 3, 227, 227, generator=g) * 40, torch.randint(20, (3,), generator=g)


def _forward_backward(net: AlexNet) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.init_paper(seed=11)
    net.seed_dropout(seed=12)  # dropout on (train mode), drawn per tower
    x, y = _inputs()
    logits = net(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad for n, p in net.named_parameters()}


def _split_worker(rank: int, world: int, out_dir: str) -> None:
    net = AlexNet(CFG, tower_indices=(rank,), exchange=ProcessGroupExchange(dist.group.WORLD))
    logits, grads = _forward_backward(net)
    torch.save({"logits": logits, "grads": grads}, f"{out_dir}/rank{rank}.pt")


def test_two_processes_equal_one_process(tmp_path):
    torch.set_num_threads(2)
    ref_logits, ref_grads = _forward_backward(AlexNet(CFG))
    run_workers(2, _split_worker, str(tmp_path))
    seen = set()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["logits"], ref_logits, rtol=1e-5, atol=1e-5)
        for name, grad in got["grads"].items():
            assert name.startswith(f"towers.{rank}.")
            scale = ref_grads[name].abs().max().clamp_min(1e-12)
            torch.testing.assert_close(grad / scale, ref_grads[name] / scale, rtol=0, atol=1e-5, msg=name)
            seen.add(name)
    assert seen == set(ref_grads)
    # Dropout was really on, and drew different masks for the two towers.
    assert not torch.equal(ref_grads["towers.0.fc7.bias"] == 0, ref_grads["towers.1.fc7.bias"] == 0)
