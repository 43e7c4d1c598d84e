"""Training-step time on CPU: both towers in one process against one tower per gloo process,
with the batch cut into m micro-batches; exposed exchange time and peak memory per process.

    .venv/bin/python -m bench.step_time [--batch 128] [--micro-batches 1 2 4 8] [--steps 3]

Same cores for both layouts: the one process uses 2 threads, each of the two processes 1.
"""

import argparse
import json
import resource
import time

import torch
import torch.distributed as dist

from bench.workers import run_workers
from config.model import ModelConfig
from distributed.exchange import ProcessGroupExchange
from distributed.pipeline import PipelinedStep, StepKind
from model.alexnet import AlexNet
from model.exchange import LocalExchange
from training.optimizer import PaperSGD


def _measure(net: AlexNet, exchange, kind: StepKind, batch: int, micro_batches: int, steps: int) -> dict[str, float]:
    net.init_paper(seed=0)
    optimizer = PaperSGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = PipelinedStep(net, exchange, None, kind, micro_batches)
    x, y = torch.randn(batch, 3, 227, 227) * 50, torch.randint(1000, (batch,))
    times = []
    for i in range(steps + 1):  # the first step warms up and is not counted
        if i == 1:
            step.exposed.take()
        start = time.perf_counter()
        optimizer.zero_grad()
        step(x, y, lambda: torch.autocast("cpu", enabled=False))
        optimizer.step()
        times.append(time.perf_counter() - start)
    mean = sum(times[1:]) / steps
    forward, backward = step.exposed.take()
    return {
        "step_s": mean,
        "exposed_fwd_s": forward / steps,
        "exposed_bwd_s": backward / steps,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _two_process(rank: int, world: int, batch: int, micro: list[int], steps: int, out: str) -> None:
    exchange = ProcessGroupExchange(dist.group.WORLD)
    rows = {m: _measure(AlexNet(ModelConfig(), (rank,), exchange), exchange, StepKind.PIPELINED, batch, m, steps)
            for m in micro}
    gathered = [None, None]
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="/tmp/step_time.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    # One process runs a single micro-batch whole, as the trainer does (training/build.py choose_step).
    kinds = {m: StepKind.WHOLE if m == 1 else StepKind.PIPELINED for m in args.micro_batches}
    one = {m: _measure(AlexNet(ModelConfig()), LocalExchange(), kinds[m], args.batch, m, args.steps) for m in args.micro_batches}
    run_workers(2, _two_process, args.batch, args.micro_batches, args.steps, args.out)
    with open(args.out) as f:  # JSON turned the micro-batch counts into strings
        two = [{int(m): row for m, row in rows.items()} for rows in json.load(f)]
    print(f"batch {args.batch}, torch {torch.__version__}, {args.steps} timed steps after 1 warm-up\n")
    print("| m | 1 process step | 2 processes step | ratio | exposed exchange fwd | bwd | share of step | peak RSS 1 proc / per proc of 2 |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.micro_batches:
        a, b = one[m], two[0][m]
        exposed = max(r[m]["exposed_fwd_s"] + r[m]["exposed_bwd_s"] for r in two)
        print(f"| {m} | {a['step_s']:.2f} s | {b['step_s']:.2f} s | {b['step_s'] / a['step_s']:.2f}x | "
              f"{1000 * b['exposed_fwd_s']:.0f} ms | {1000 * b['exposed_bwd_s']:.0f} ms | "
              f"{100 * exposed / b['step_s']:.1f}% | {a['peak_rss_gib']:.2f} / "
              f"{max(r[m]['peak_rss_gib'] for r in two):.2f} GiB |")


if __name__ == "__main__":
    main()
