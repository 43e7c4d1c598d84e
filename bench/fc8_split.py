"""FC8 two ways across two gloo processes: split by input (sum of partial logits) or on gathered FC7.

    .venv/bin/python -m bench.fc8_split [--batch 128] [--repeats 20]

Times forward + backward of FC8 with its exchange, per step, on CPU.
"""

import argparse
import time

import torch
import torch.distributed as dist
from torch import nn

from bench.workers import run_workers
from distributed.exchange import ProcessGroupExchange
from model.exchange import Pending
from model.layers import GATHER, SUM


class _TimedExchange(ProcessGroupExchange):
    """The exchange, with the seconds its autograd face spends waiting for collectives to land."""

    seconds = 0.0

    def start(self, kind, parts) -> Pending:
        return self._timed(super().start(kind, parts))

    def start_dual(self, kind, grad, count) -> Pending:
        return self._timed(super().start_dual(kind, grad, count))

    def _timed(self, pending: Pending) -> Pending:
        def finish():
            start = time.perf_counter()
            result = pending.wait()
            self.seconds += time.perf_counter() - start
            return result
        return Pending(None, finish)


def _bench(rank: int, world: int, batch: int, repeats: int) -> None:
    torch.manual_seed(rank)
    fc7_half = torch.randn(batch, 2048, requires_grad=True)
    split = nn.Linear(2048, 1000, bias=rank == 0)
    whole = nn.Linear(4096, 1000)
    exchange = _TimedExchange(dist.group.WORLD)
    ways = {
        "split by input, all-reduce 1000 floats/image": lambda: exchange.join(SUM, [split(fc7_half)]),
        "gather FC7 (2048 floats/image), FC8 on both": lambda: whole(exchange.join(GATHER, [fc7_half])),
    }
    for name, way in ways.items():
        for _ in range(3):
            way().sum().backward()
        dist.barrier()
        exchange.seconds = 0.0
        start = time.perf_counter()
        for _ in range(repeats):
            way().sum().backward()
        elapsed = (time.perf_counter() - start) / repeats
        if rank == 0:
            print(f"{name:<48} {1000 * elapsed:7.2f} ms/step, exchange {1000 * exchange.seconds / repeats:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    run_workers(2, _bench, args.batch, args.repeats)


if __name__ == "__main__":
    main()
