"""What crossing "machines" costs: the training step on one node against two (torchrun agents with
c10d rendezvous), on the same cores, on CPU over gloo.

    .venv/bin/python -m bench.multinode [--batch 32] [--steps 6]

Layouts: 1 node x 2 processes (one replica), 1 node x 4 (2 replicas x 2 towers), 2 nodes x 2 on
loopback, and 2 nodes x 2 each in its own network namespace joined by a veth pair (bench/netns.py;
root only), so the replicas' gradient all-reduce crosses an interface. Step time is the median of
the logged `time/step_s` after the first two steps; exposed exchange from `time/exchange_pct`.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench import command
from bench.netns import Namespaces, namespaces_unavailable

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def overrides(run_dir: Path, batch: int, steps: int) -> list[str]:
    return ["model.num_classes=10", "model.bias_init=0.1", "data.synthetic_train_images=256", "data.synthetic_val_images=8",
            "data.workers=0", "train.device=cpu", f"train.batch_size={batch}", "train.micro_batches=2",
            f"train.max_steps={steps}", "log.every_steps=1", "log.progress=false", "checkpoint.keep=1",
            f"log.dir={run_dir}", f"checkpoint.dir={run_dir}/ck"]


def torchrun(run_dir: Path, nodes: int, per_node: int, node_args: tuple[str, ...], endpoint: str, args) -> list[str]:
    launch = ["--standalone"] if nodes == 1 else [
        f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_dir.name}", *node_args]
    return [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc_per_node={per_node}",
            "-m", "distributed.main", *overrides(run_dir, args.batch, args.steps)]


def step_times(run_dir: Path) -> tuple[float, float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.value for e in events.Scalars("time/step_s")][2:]
    exposed = [e.value for e in events.Scalars("time/exchange_pct")][2:]
    return statistics.median(steps), statistics.median(exposed)


def run(name: str, nodes: int, per_node: int, tmp: Path, args, net: Namespaces | None = None) -> tuple[float, float]:
    run_dir = tmp / name.replace(" ", "-")
    endpoint = f"{net.addresses[0] if net else '127.0.0.1'}:29{nodes}{per_node}7"
    procs = []
    for n in range(nodes):
        node_args: tuple[str, ...] = ()
        env = ENV
        if net:
            node_args = (f"--rdzv-conf=is_host={'true' if n == 0 else 'false'}", f"--local-addr={net.addresses[n]}")
            env = {**ENV, "GLOO_SOCKET_IFNAME": net.links[n]}
        cmd = torchrun(run_dir, nodes, per_node, node_args, endpoint, args)
        procs.append(subprocess.Popen(net.run_in(n, cmd) if net else cmd, cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        time.sleep(0.5)  # node 0 binds the rendezvous endpoint first
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode:
            raise SystemExit(f"{name}: rc {proc.returncode}\n{err[-3000:]}")
    return step_times(run_dir)


def main() -> None:
    parser = command.parser("bench.multinode", __doc__)
    parser.add_argument("--batch", type=int, default=32, help="images per step over all replicas")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, nodes, per_node in (("1 node x 2 processes", 1, 2), ("1 node x 4 processes", 1, 4),
                                      ("2 nodes x 2 processes, loopback", 2, 2)):
            rows.append((name, *run(name, nodes, per_node, Path(tmp), args)))
        why = namespaces_unavailable()
        if why:
            rows.append(("2 nodes x 2 processes, network namespaces", float("nan"), float("nan")))
            print(f"network namespaces skipped: {why}")
        else:
            net = Namespaces()
            try:
                net.up()
                rows.append(("2 nodes x 2 processes, network namespaces",
                             *run("2 nodes namespaces", 2, 2, Path(tmp), args, net)))
            finally:
                net.down()
    print(f"batch {args.batch} over all replicas, train.micro_batches=2, {args.steps} steps, {os.cpu_count()} cores\n")
    print("| layout | step | exposed exchange |")
    print("|---|---:|---:|")
    for name, step, exposed in rows:
        print(f"| {name} | {step:.2f} s | {exposed:.1f}% |")


if __name__ == "__main__":
    main()
