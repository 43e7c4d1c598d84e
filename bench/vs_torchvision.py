"""This trainer's training step against torchvision's alexnet trained the pytorch/examples way, on one device.

    .venv/bin/python -m bench.vs_torchvision [--quick] [--batches 64 128] [--steps 5] [--threads 2]

Ours (the trainer's one-process step, then PaperSGD), "before" (the same net with model/lrn/'s "reference" LRN
and separate ReLU and max-pool) and torchvision step in turn, fp32 and bf16, eager and compiled (--quick: fp32
eager only), then torch.profiler's time per kind of operation and the two-process step. What each variant is and
the figures: docs/BENCHMARKS.md.
"""

import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision

from bench import command
from bench.op_shares import KINDS, shares
from bench.workers import run_workers
from config.model import ModelConfig
from distributed.exchange import ProcessGroupExchange
from distributed.pipeline import PipelinedStep, StepKind
from model.alexnet import AlexNet
from model.exchange import LocalExchange
from model.lrn import LocalResponseNorm
from training.optimizer import PaperSGD

VARIANTS = {"fp32": (False, False), "bf16": (True, False), "fp32+compile": (False, True), "bf16+compile": (True, True)}
"""name -> (bf16 autocast, compiled)."""
PAPER = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
MICRO_BATCHES_TWO_PROCESSES = 4
"""config.yaml's train.micro_batches: what the two-process CPU run uses."""


def autocast(bf16: bool):
    return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext


def ours(batch: int, bf16: bool, compiled: bool, implementation: str = "auto", towers=(0, 1), exchange=None,
         kind: StepKind = StepKind.WHOLE, micro_batches: int = 1):
    """(net, step) for this trainer: both towers (or `towers`) with `exchange`, PipelinedStep + PaperSGD."""
    torch.manual_seed(0)
    exchange = exchange or LocalExchange()
    net = AlexNet(ModelConfig(), towers, exchange)
    net.init_paper(seed=0)
    LocalResponseNorm.set_implementation_in(net, implementation)
    if compiled:
        net.compile_stages()
    optimizer = PaperSGD(net.parameters(), **PAPER)
    pipeline = PipelinedStep(net, exchange, None, kind, micro_batches)
    images, labels = torch.randn(batch, 3, 227, 227) * 50, torch.randint(1000, (batch,))
    count = iter(range(1 << 30))

    def step():
        net.train()
        net.seed_dropout(next(count))
        optimizer.zero_grad(set_to_none=True)
        pipeline(images, labels, autocast(bf16))
        optimizer.step()

    return net, step


def examples(batch: int, bf16: bool, compiled: bool):
    """(net, step) for torchvision's alexnet as pytorch/examples/imagenet/main.py trains it."""
    torch.manual_seed(0)
    net = torchvision.models.alexnet()
    model = torch.compile(net) if compiled else net
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = torch.randn(batch, 3, 224, 224) * 50, torch.randint(1000, (batch,))

    def step():
        net.train()
        with autocast(bf16)():
            loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # its meters read the loss every step

    return net, step


def interleaved(steps: dict, timed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Wall and CPU seconds per step (medians of `timed`) of each step function, called in turn after one warm-up
    each. CPU time (all of the process's threads) stops while other work holds the cores, so on shared cores
    its ratios are the steadier ones."""
    wall, cpu = {name: [] for name in steps}, {name: [] for name in steps}
    for round_ in range(timed + 1):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            if round_:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return ({name: statistics.median(t) for name, t in wall.items()},
            {name: statistics.median(t) for name, t in cpu.items()})


def _two_process_worker(rank: int, world: int, batch: int, timed: int, out: str) -> None:
    exchange = ProcessGroupExchange(dist.group.WORLD)
    _, step = ours(batch, False, False, towers=(rank,), exchange=exchange, kind=StepKind.PIPELINED,
                   micro_batches=MICRO_BATCHES_TWO_PROCESSES)
    seconds = interleaved({"two": step}, timed)[0]["two"]
    gathered = [None] * world
    dist.all_gather_object(gathered, seconds)
    if rank == 0:
        Path(out).write_text(json.dumps(max(gathered)))


def two_processes(batch: int, timed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds.json"
        run_workers(2, _two_process_worker, batch, timed, str(out))
        return json.loads(out.read_text())


def main() -> None:
    parser = command.parser("bench.vs_torchvision", __doc__)
    parser.add_argument("--quick", action="store_true", help="fp32 eager only (no bf16, no compilation)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per net and row, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {args.threads} threads, "
          f"C++ LRN kernel: {'built' if LocalResponseNorm.kernel_available() else 'not built (the twin runs)'}; "
          f"median of {args.steps} steps after 1 warm-up\n", flush=True)
    print("| batch | variant | ours images/s | before (F.local_response_norm) | torchvision images/s "
          "| ours / torchvision | before / torchvision | the same two ratios by CPU time |")
    print("|---:|---|---:|---:|---:|---:|---:|---|", flush=True)
    best: dict[int, dict[str, float]] = {}
    for batch in args.batches:
        for variant in ["fp32"] if args.quick else list(VARIANTS):
            bf16, compiled = VARIANTS[variant]
            torch._dynamo.reset()
            nets = {"ours": ours(batch, bf16, compiled)[1], "torchvision": examples(batch, bf16, compiled)[1]}
            if variant == "fp32":  # "before" only where it is the comparison the issue names
                nets["before"] = ours(batch, bf16, compiled, implementation="reference")[1]
            wall, cpu = interleaved(nets, args.steps)
            rate = {name: batch / s for name, s in wall.items()}
            for name in ("ours", "torchvision"):
                best.setdefault(batch, {})[name] = max(best.get(batch, {}).get(name, 0.0), rate[name])
            before = rate.get("before")
            before_cells = f"{before:.1f} | {before / rate['torchvision']:.2f}x" if before else "- | -"
            by_cpu = " / ".join(f"{cpu['torchvision'] / cpu[name]:.2f}x" for name in ("ours", "before") if name in cpu)
            print(f"| {batch} | {variant} | {rate['ours']:.1f} | {before_cells.split(' | ')[0]} | "
                  f"{rate['torchvision']:.1f} | **{rate['ours'] / rate['torchvision']:.2f}x** | "
                  f"{before_cells.split(' | ')[1]} | {by_cpu} |", flush=True)
        if not args.quick:
            b = best[batch]
            print(f"| {batch} | best of each | {b['ours']:.1f} | - | {b['torchvision']:.1f} | "
                  f"**{b['ours'] / b['torchvision']:.2f}x** | - | - |", flush=True)
    print("\nTwo processes, one tower and one thread each (gloo), "
          f"{MICRO_BATCHES_TWO_PROCESSES} micro-batches, fp32, the slower process's median step:\n")
    for batch in args.batches:
        seconds = two_processes(batch, args.steps)
        print(f"- batch {batch}: {batch / seconds:.1f} images/s", flush=True)
    print("\nms per step by kind of operation (torch.profiler, fp32 eager, 2 profiled steps; ours' lrn is conv1 and "
          "conv2's ReLU + LRN + max-pool in one op, before's the same three as separate ops):\n")
    print("| batch | net | " + " | ".join(KINDS) + " | total |")
    print("|---:|---|" + "---:|" * (len(KINDS) + 1))
    for batch in args.batches:
        for name, (net, step) in (("ours", ours(batch, False, False)),
                                  ("before", ours(batch, False, False, implementation="reference")),
                                  ("torchvision", examples(batch, False, False))):
            ms = shares(net, step)
            cells = " | ".join(f"{ms[k]:.0f} ({100 * ms[k] / ms['total']:.0f}%)" for k in KINDS)
            print(f"| {batch} | {name} | {cells} | {ms['total']:.0f} |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
