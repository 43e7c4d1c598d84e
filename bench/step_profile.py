"""Where a training step's time goes on a GPU, at the paper's batch 128 (docs/BENCHMARKS.md).

    python -m bench.step_profile --out DIR [--smoke]

For bf16+channels_last eager, with its stages compiled, with them replayed as CUDA graphs (GPU), and
with the whole model compiled as one graph:
- wall time per step (synchronised) against host time per step (the Python thread's time to
  enqueue the step's work, not waiting for the GPU): when they are equal, the GPU waits for the host;
- the parts of Trainer.train_step on their own (augmentation, the pipelined forward and backward,
  the optimiser), each synchronised;
- the packed-data loader alone (no training) at several worker counts.
torch.profiler's tables (top host and device operators) go to DIR/profile_*.txt.
"""

import json
import tempfile
import time
from pathlib import Path

import torch

from bench import command
from bench.gpu import Device, our_trainer, synthetic_batches
from bench.images import all_cores, make_jpegs, pack_jpegs


def per_step(dev: Device, fn, steps: int) -> tuple[float, float]:
    """(wall, host) seconds per call of fn over `steps` calls after 5 warm-ups."""
    for _ in range(5):
        fn()
    dev.sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    host = time.perf_counter() - start
    dev.sync()
    return (time.perf_counter() - start) / steps, host / steps


def profile_table(dev: Device, fn, path: Path) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            fn()
        dev.sync()
    averages = prof.key_averages()
    text = averages.table(sort_by="self_cpu_time_total", row_limit=30)
    if dev.cuda:
        text += "\n\n" + averages.table(sort_by="self_cuda_time_total", row_limit=20)
    path.write_text(text)


def trainer_step(trainer, images, labels):
    def step():
        trainer.train_step(images, labels)
        trainer.progress.step += 1
    return step


def parts(dev: Device, trainer, images, labels, steps: int) -> dict[str, float]:
    """Each part of Trainer.train_step alone, synchronised, in ms."""
    rng = torch.Generator().manual_seed(0)
    inputs = trainer.augment.train(images, rng).contiguous(memory_format=trainer.speed.memory_format)
    trainer.model.train()

    def forward_backward():
        trainer.pipeline(inputs, labels, trainer.autocast)

    out = {}
    for name, fn in (("augment", lambda: trainer.augment.train(images, rng)),
                     ("seed_dropout", lambda: trainer.model.seed_dropout(1)),
                     ("pipeline forward+backward", forward_backward),
                     ("optimizer", trainer.optimizer.step)):
        out[name] = 1000 * per_step(dev, fn, steps)[0]
    return out


def main() -> None:
    parser = command.parser("bench.step_profile", __doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, help="scratch folder for the JPEGs, the pack and runs (default: a temporary one)")
    args = parser.parse_args()
    dev = Device()
    batch, steps = (8, 2) if args.smoke else (128, 30)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        measure(dev, Path(tmp), args.out, batch, steps, args.smoke)


def measure(dev: Device, work: Path, out: Path, batch: int, steps: int, smoke: bool) -> None:
    make_jpegs(work / "jpegs", 64 if smoke else 12_800, workers=all_cores())
    pack_jpegs(work / "jpegs", work / "pack", workers=all_cores())
    results: dict = {"device": dev.name(), "torch": torch.__version__, "batch": batch}

    def save(key, value):
        results[key] = value
        print(key, json.dumps(value), flush=True)
        (out / "step_profile.json").write_text(json.dumps(results, indent=1))

    rows = [("eager", "bf16+channels_last", False), ("compile", "bf16+channels_last+compile", False),
            ("whole model compiled", "bf16+channels_last", True)]
    if dev.cuda:
        rows.insert(2, ("compile cudagraphs", "bf16+channels_last+cudagraphs", False))
    for label, variant, whole_model in rows:
        torch._dynamo.reset()
        trainer = our_trainer(work / "pack", work / "run", variant, batch, 1, 1)
        if whole_model:  # one graph for both towers and their exchanges, in place of the per-stage graphs
            trainer.model.compile()
        images, labels = next(synthetic_batches(dev, batch))
        step = trainer_step(trainer, images, labels)
        try:
            wall, host = per_step(dev, step, steps)
            save(f"{label}: step", {"wall_ms": 1000 * wall, "host_ms": 1000 * host, "images_per_s": batch / wall})
            if label in ("eager", "compile"):
                save(f"{label}: parts", parts(dev, trainer, images, labels, steps))
                profile_table(dev, step, out / f"profile_{label}.txt")
        except Exception as err:  # a mode that does not work here is a finding, not the end of the run
            save(f"{label}: failed", repr(err)[:2000])
        del trainer

    for workers in ((1,) if smoke else (4, 8, 12, 16)):
        trainer = our_trainer(work / "pack", work / "run", "bf16+channels_last", batch, 1, workers)
        feed = trainer.feed(0)
        for _ in range(10):
            next(feed)
        dev.sync()
        start = time.perf_counter()
        count = 2 if smoke else 150
        for _ in range(count):
            images, _ = next(feed)
        dev.sync()
        save(f"loader only, {workers} workers", {"images_per_s": count * batch / (time.perf_counter() - start)})
        feed.close()
        del trainer


if __name__ == "__main__":
    main()
