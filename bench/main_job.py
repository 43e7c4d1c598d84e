"""The main job's time, end to end: its training step against bench.step_time's, and what lies outside the steps.

    .venv/bin/python -m bench.main_job [--seeds 0 1 2 3 4] [--config FILE] [section.key=value ...] [--steps 3]
                                       [--fresh-compile-cache]

Runs `./run.sh --config FILE` (default: the quickstart, what `./run.sh` runs), once per seed
given, each with its logs and checkpoints in a folder under runs/ that it removes afterwards
(the disk a real run writes to), then, in the same run, bench.step_time's measurement of
the same training step: two gloo processes, one tower and one thread each, forward +
backward + the paper's SGD on a batch already in memory, with the job's model, batch,
micro-batches and speed switches. It prints each run's final errors and time, and where the
time went.

The job's own step is read from its TensorBoard scalars: `time/step_s` of each log window
(the wait for the loader included); the windows that hold no epoch end, the first left
out, give its steady step. The epoch-end scalars (written after each validation), the last
checkpoint's files and the final scalars mark where the validations, the checkpoint
writes and the ten-patch evaluation begin and end.
"""

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench import command
from bench.workers import run_workers
from checkpoints import store
from config.loading import load_config
from distributed.exchange import ProcessGroupExchange
from distributed.pipeline import PipelinedStep, StepKind
from model.alexnet import AlexNet
from packs.synthetic_cache import cache_name
from training.optimizer import build_optimizer
from training.speed import SpeedSwitches

ROOT = Path(__file__).resolve().parent.parent
FINAL = re.compile(r"final validation \((centre crop|10 patches)\): top-1 error ([\d.]+)")
EPOCH = re.compile(r"epoch \d+: train top-1 error")


def run_job(config: str, overrides: list[str], folder: Path, env: dict) -> tuple[float, float, float]:
    """Run the main job with its logs and checkpoints in `folder`; (launch, exit) wall-clock times and the CPU
    seconds of all its processes."""
    words = ["--config", config, f"log.dir={folder}", f"checkpoint.dir={folder}/checkpoints", *overrides]
    with open(folder / "job.log", "w") as log:
        cpu = _children_cpu()
        launch = time.time()
        done = subprocess.run([str(ROOT / "run.sh"), *words], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        end = time.time()
        cpu = _children_cpu() - cpu
    if done.returncode:
        sys.exit(f"the main job failed (exit status {done.returncode}); the end of its output:\n"
                 + (folder / "job.log").read_text()[-3000:])
    return launch, end, cpu


def _children_cpu() -> float:
    """User + system CPU seconds of the finished processes this one has waited for, and theirs: other work on
    the same cores stretches the wall clock, much less this."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def breakdown(folder: Path, every: int, launch: float, end: float) -> tuple[dict[str, float], float, int]:
    """({part: seconds}, the steady seconds per step, steps) of the job whose TensorBoard events are in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    # Each log window's wall time at its end, and its length (time/step_s is the window's time per step).
    windows = {e.step: (e.wall_time, e.value * every) for e in events.Scalars("time/step_s")}
    epoch_ends = {e.step: e.wall_time for e in events.Scalars("error/val_top1")}  # written after the validation
    final = events.Scalars("error/final_val10_top1")[-1].wall_time
    if any(step % every for step in epoch_ends):
        sys.exit(f"log.every_steps={every} must divide the steps of an epoch for the windows to tell steps apart")
    first, steps = min(windows), max(windows)
    steady = [length / every for step, (_, length) in windows.items() if step != first and step - every not in epoch_ends]
    step_s = statistics.mean(steady)
    validations = {e: wall - windows[e][0] for e, wall in epoch_ends.items()}
    # The window after an epoch end began at that end's log: it holds the validation, the checkpoint and its steps
    # (so this checkpoint figure also carries those steps' difference from the mean).
    checkpoints = [windows[e + every][1] - validations[e] - every * step_s for e in epoch_ends if e + every in windows]
    last_end = max(epoch_ends)
    written = max((p / store.MARKER).stat().st_mtime for p in (folder / "checkpoints").glob("step_*"))
    checkpoints.append(written - epoch_ends[last_end])
    parts = {
        "start-up (launch to the first step)": windows[first][0] - windows[first][1] - launch,
        "first window's excess over steady steps (compilation, loader start)": windows[first][1] - every * step_s,
        f"training steps ({steps} x {step_s:.2f} s)": steps * step_s,
        f"validations ({len(validations)}, centre crop, with the conv1 figure)": sum(validations.values()),
        f"checkpoint writes ({len(checkpoints)})": sum(checkpoints),
        "final ten-patch evaluation": final - written,
        "shut-down": end - final,
    }
    return parts, step_s, steps


def _step_time(rank: int, world: int, config: str, overrides: list[str], steps: int, out: str) -> None:
    """bench.step_time's measurement, with the job's model, batch, micro-batches and speed switches."""
    cfg = load_config([ROOT / "config.yaml", config], overrides)
    speed = SpeedSwitches.resolve(cfg.train, torch.device("cpu"))
    speed.apply_process_flags()
    exchange = ProcessGroupExchange(dist.group.WORLD)
    net = AlexNet(cfg.model, (rank,), exchange)
    net.init_paper(cfg.train.seed)
    net.to(memory_format=speed.memory_format)
    if speed.compile != "off":
        net.compile_stages()
    t = cfg.train
    optimizer = build_optimizer(net.parameters(), t.optimizer, t.lr, t.momentum, t.weight_decay)
    step = PipelinedStep(net, exchange, None, StepKind.PIPELINED, t.micro_batches)  # a tower per process
    size = cfg.model.input_size
    x = (torch.randn(t.batch_size, 3, size, size) * 50).contiguous(memory_format=speed.memory_format)
    y = torch.randint(cfg.model.num_classes, (t.batch_size,))
    times = []
    for _ in range(steps + 1):  # the first step warms up (and compiles) and is not counted
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step(x, y, lambda: speed.autocast(torch.device("cpu")))
        optimizer.step()
        times.append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(json.dumps(times[1:]))


def job(config: str, overrides: list[str], every: int, env: dict, cache: Path | None) -> dict:
    """One run of the main job: its final errors, epochs, time and breakdown; `cache`: its embedded data's pack."""
    folder = Path(tempfile.mkdtemp(prefix="bench_main_job_", dir=ROOT / "runs"))
    try:
        found = "off" if cache is None else "found" if cache.is_dir() else "built"
        load = os.getloadavg()[0]
        launch, end, cpu = run_job(config, overrides, folder, env)
        parts, step_s, steps = breakdown(folder, every, launch, end)
        log = (folder / "job.log").read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    final = dict(FINAL.findall(log))
    return {"parts": parts, "step_s": step_s, "steps": steps, "seconds": end - launch, "cpu": cpu, "load": load,
            "epochs": len(EPOCH.findall(log)), "centre": final["centre crop"], "ten": final["10 patches"],
            "cache": found}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def main() -> None:
    parser = command.parser("bench.main_job", __doc__)
    parser.add_argument("--config", default="experiments/quickstart.yaml", help="the overlay ./run.sh trains")
    parser.add_argument("overrides", nargs="*", help="section.key=value, passed to the job and the step")
    parser.add_argument("--seeds", type=int, nargs="+", help="run the job once per train.seed (default: the config's)")
    parser.add_argument("--steps", type=int, default=3, help="bench.step_time's timed steps (after one warm-up)")
    parser.add_argument("--fresh-compile-cache", action="store_true",
                        help="compile from nothing, as a new user's first run does (torch.compile keeps a cache in /tmp)")
    args = parser.parse_args()
    cfg = load_config([ROOT / "config.yaml", ROOT / args.config], args.overrides)
    if cfg.train.device == "cuda" or torch.cuda.is_available():
        sys.exit("bench.main_job measures the CPU main job (two tower processes over gloo)")
    (ROOT / "runs").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_main_job_", dir=ROOT / "runs"))
    env = dict(os.environ)
    if args.fresh_compile_cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor_step_time")
    seeds = args.seeds or [cfg.train.seed]
    runs = {}
    try:
        for seed in seeds:
            words = [*args.overrides, f"train.seed={seed}"] if args.seeds else args.overrides
            cache = ROOT / cfg.data.synthetic_cache / cache_name(cfg.data, seed) if cfg.data.synthetic_cache else None
            runs[seed] = job(args.config, words, cfg.log.every_steps, env, cache)
        run_workers(2, _step_time, str(ROOT / args.config), args.overrides, args.steps, str(scratch / "step.txt"))
        bench_step = statistics.mean(json.loads((scratch / "step.txt").read_text()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    speed = SpeedSwitches.resolve(cfg.train, torch.device("cpu"))
    print(f"./run.sh --config {args.config} {' '.join(args.overrides)}".rstrip()
          + (f" train.seed=S for S in {' '.join(map(str, seeds))}" if args.seeds else ""))
    print(f"{speed.describe()}; torch {torch.__version__}; compile cache {'fresh' if args.fresh_compile_cache else 'as found'}; "
          f"{os.cpu_count()} cores\n")
    print("| seed | val top-1, centre crop | val top-1, 10 patches | epochs | steps | time | load before |\n"
          "|---:|---:|---:|---:|---:|---:|---:|")
    for seed, r in runs.items():
        print(f"| {seed} | {r['centre']} | {r['ten']} | {r['epochs']} | {r['steps']} | {_minutes(r['seconds'])} | "
              f"{r['load']:.2f} |")
    print("\n| part of the main job | " + " | ".join(f"seed {s}" for s in runs) + " |\n|---|"
          + "---:|" * len(runs))
    for k, name in enumerate(next(iter(runs.values()))["parts"]):
        cells = [f"{list(r['parts'].values())[k]:.1f} s ({100 * list(r['parts'].values())[k] / r['seconds']:.1f}%)"
                 for r in runs.values()]
        print(f"| {re.sub(r' [(][0-9]+ x [0-9.]+ s[)]', '', name)} | " + " | ".join(cells) + " |")
    print("| seconds per training step | " + " | ".join(f"{r['step_s']:.2f}" for r in runs.values()) + " |")
    print("| cache of the embedded data | " + " | ".join(r["cache"] for r in runs.values()) + " |")
    print("| CPU seconds of all its processes | " + " | ".join(f"{r['cpu']:.0f}" for r in runs.values()) + " |")
    print("| **the main job, end to end** | " + " | ".join(f"**{r['seconds']:.1f} s**" for r in runs.values()) + " |\n")
    print(f"bench.step_time's step, measured after the jobs ({args.steps} steps after a warm-up): {bench_step:.2f} s")
    for seed, r in runs.items():
        outside = r["seconds"] - r["steps"] * r["step_s"]
        print(f"seed {seed}: the job's step runs at {100 * bench_step / r['step_s']:.0f}% of its speed (goal: at least "
              f"95%); outside the steps {outside:.1f} s, {100 * outside / r['seconds']:.1f}% of the job (goal: at most 15%)")


if __name__ == "__main__":
    main()
