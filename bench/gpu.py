"""The fast path measured: this trainer's step per variant against torchvision's alexnet trained the
pytorch/examples way, on one device (the GPU when there is one, else the CPU).

    python -m bench.gpu --out DIR [--rows GROUP ...] [--variants V ...] [--batches B ...] [--smoke] [--work DIR]
    (bash bench/gpu.sh OUT runs it on a GPU machine, in steps)

Sizes: on a GPU batches of 128 and 512, 30 timed steps; on a CPU (no GPU) batch 128, 3 timed steps;
--smoke: batch 8, 2 steps. First the matrix-product peaks (bf16, and tf32 on a GPU / fp32 on a CPU):
the ceiling MFU is read against. Then the --rows groups, in the order given (ROWS):

- baseline: torchvision's alexnet the pytorch/examples imagenet way (SGD, a host sync per step for its
  meters), fp32 and bf16 autocast, on float batches already on the device, at the first batch size.
- ours: this trainer's training step (Trainer.train_step: augmentation on the device, forward, loss,
  backward, the paper's SGD) per --variants, in their order, at every batch size (the grouped arithmetic
  and the whole step as one CUDA graph at the first only), on uint8 batches already on the device.
- micro-batches: bf16+channels_last at the first batch size, cut into micro-batches.
- packed: the last two --variants that run any layout, through the real loader on packed images.
- imagefolder: the baseline reading the JPEGs the pack was made from (ImageFolder + PIL, a DataLoader
  on every core).

Images/s, step time, MFU (4.35 GFLOP per training image, the paper's net, over the measured bf16
peak) and peak memory go to DIR/gpu.md (a table) and DIR/gpu.json, both rewritten after every row.
--smoke runs every row at tiny sizes on whatever device there is, so CI keeps the script working.
"""

import json
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from bench import command
from bench.images import all_cores, examples_loader, make_jpegs, pack_jpegs
from config.loading import load_config
from distributed import layout
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
FLOP_PER_TRAINING_IMAGE = 4.35e9
"""Forward and backward of the paper's net for one 227x227 image (3 x 1.45 GFLOP)."""

VARIANTS = ("fp32", "tf32", "bf16", "bf16+channels_last", "bf16+channels_last+compile", "bf16+channels_last+cudagraphs",
            "bf16+grouped", "bf16+step_graph", "bf16+grouped+step_graph", "bf16+channels_last+compile+step_graph",
            "bf16+channels_last+compile+grouped+step_graph")
"""train.precision, then the switches that are on (compile: train.compile=on; cudagraphs: =cudagraphs)."""


def switches(variant: str) -> list[str]:
    """The variant's train.* override words: its precision, and every other speed switch on or off."""
    precision, *on = variant.split("+")
    compile_ = "cudagraphs" if "cudagraphs" in on else "on" if "compile" in on else "off"
    return [f"train.precision={precision}", f"train.compile={compile_}",
            *(f"train.{key}={'on' if key in on else 'off'}" for key in ("channels_last", "step_graph", "grouped"))]


ROWS = ("baseline", "ours", "micro-batches", "packed", "imagefolder")
"""The groups of rows (module doc), in their default order."""

GPU_ONLY = ("tf32", "bf16+channels_last+cudagraphs", *(name for name in VARIANTS if "step_graph" in name))
ONE_PASS_ONLY = tuple(name for name in VARIANTS if "grouped" in name or "step_graph" in name)
"""Timed at the first batch size only (128: the host bounds the step there), so bench/gpu.sh keeps its time."""


@dataclass
class Row:
    what: str
    data: str
    batch: int
    micro_batches: int
    images_per_s: float
    step_ms: float
    mfu: float
    peak_memory_gib: float


@dataclass
class Sizes:
    matmul: int
    batches: tuple[int, ...]
    micro_batch_rows: tuple[int, ...]
    warmup: int
    steps: int
    jpegs: int
    workers: int


FULL = Sizes(matmul=8192, batches=(128, 512), micro_batch_rows=(4,), warmup=5, steps=30, jpegs=12_800,
             workers=min(12, all_cores()))
CPU = Sizes(matmul=2048, batches=(128,), micro_batch_rows=(4,), warmup=1, steps=3, jpegs=1280, workers=1)
SMOKE = Sizes(matmul=256, batches=(8,), micro_batch_rows=(2,), warmup=1, steps=2, jpegs=64, workers=1)


class Device:
    """Synchronisation, timing and peak memory for the device under test."""

    def __init__(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's peak RSS

    def name(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else f"CPU, {all_cores()} cores"


def matmul_tflops(dev: Device, dtype: torch.dtype, size: int, tf32: bool) -> float:
    """Median rate of a size^3 matrix product on random data (never zeros: they run faster)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = (torch.randn(size, size, device=dev.device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        dev.sync()
        start = time.perf_counter()
        a @ b
        dev.sync()
        times.append(time.perf_counter() - start)
    torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * size**3 / statistics.median(times) / 1e12


def timed(dev: Device, step, batches, warmup: int, steps: int) -> float:
    """Seconds per step over `steps` steps after `warmup` (compilation, cuDNN's search, allocations)."""
    for _ in range(warmup):
        step(*next(batches))
    dev.sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    dev.sync()
    return (time.perf_counter() - start) / steps


def row(dev: Device, what: str, data: str, batch: int, m: int, seconds: float, peak_bf16: float) -> Row:
    rate = batch / seconds
    return Row(what, data, batch, m, rate, 1000 * seconds, rate * FLOP_PER_TRAINING_IMAGE / (peak_bf16 * 1e12),
               dev.peak_memory_gib())


def our_trainer(pack: Path, run_dir: Path, variant: str, batch: int, m: int, workers: int) -> Trainer:
    cfg = load_config([ROOT / "config.yaml"], [
        f"data.root={pack}", f"data.workers={workers}", "model.num_classes=1000", f"train.batch_size={batch}",
        f"train.micro_batches={m}", *switches(variant), "train.cudnn_benchmark=on",
        f"log.dir={run_dir}", "log.progress=false", f"checkpoint.dir={run_dir}/ck",
    ])
    return Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))


def synthetic_batches(dev: Device, batch: int):
    images = torch.randint(256, (batch, 3, 256, 256), dtype=torch.uint8, device=dev.device)
    labels = torch.randint(1000, (batch,), device=dev.device)
    while True:
        yield images, labels


def measure_ours(dev: Device, pack: Path, work: Path, sizes: Sizes, peak: float, record, variants: list[str],
                 rows: str) -> None:
    """The `rows` group ("ours", "micro-batches" or "packed") of this trainer's rows."""
    def run(variant: str, batch: int, m: int, data: str) -> None:
        torch._dynamo.reset()  # each variant compiles (or not) from scratch
        dev.reset_memory()
        trainer = our_trainer(pack, work / "run", variant, batch, m, sizes.workers)

        def step(images, labels):
            trainer.train_step(images, labels)
            trainer.progress.step += 1

        batches = synthetic_batches(dev, batch) if data == "synthetic" else trainer.feed(0)
        seconds = timed(dev, step, batches, sizes.warmup, sizes.steps)
        record(row(dev, f"this trainer, {variant}", data, batch, m, seconds, peak))
        if data != "synthetic":
            batches.close()

    variants = [v for v in variants if dev.cuda or v not in GPU_ONLY]
    if rows == "ours":
        for batch in sizes.batches:
            for variant in variants:
                if batch == sizes.batches[0] or variant not in ONE_PASS_ONLY:
                    run(variant, batch, 1, "synthetic")
    elif rows == "micro-batches":  # what cutting the batch into micro-batches costs in one process
        for m in sizes.micro_batch_rows:
            run("bf16+channels_last", sizes.batches[0], m, "synthetic")
    else:
        for variant in [v for v in variants if v not in ONE_PASS_ONLY][-2:]:
            run(variant, sizes.batches[0], 1, "packed")


def measure_examples(dev: Device, jpegs: Path, sizes: Sizes, peak: float, record, rows: str) -> None:
    """torchvision's alexnet as pytorch/examples imagenet/main.py trains it (cudnn.benchmark on, SGD lr 0.01
    momentum 0.9 wd 1e-4, loss.item() and top-1/top-5 each step for its meters): bf16 autocast then fp32,
    on device batches (`rows` "baseline") or through ImageFolder + PIL ("imagefolder")."""
    torch.backends.cudnn.benchmark = True
    batch = sizes.batches[0]
    data = "synthetic" if rows == "baseline" else "ImageFolder + PIL"
    for amp in (True, False):
        dev.reset_memory()
        model = torchvision.models.alexnet().to(dev.device)
        optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=1e-4)

        def step(images, target):
            images = images.to(dev.device, non_blocking=True)
            target = target.to(dev.device, non_blocking=True)
            with torch.autocast(dev.device.type, dtype=torch.bfloat16, enabled=amp):
                output = model(images)
                loss = F.cross_entropy(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the examples' meters read the loss and accuracy every step
            (output.topk(5, 1).indices == target[:, None]).any(1).float().mean().item()

        if data == "synthetic":
            images = torch.randn(batch, 3, 224, 224, device=dev.device)
            target = torch.randint(1000, (batch,), device=dev.device)
            batches = iter(lambda: (images, target), None)
            seconds = timed(dev, step, batches, sizes.warmup, sizes.steps)
        else:
            loader = examples_loader(jpegs, batch, all_cores(), pin_memory=dev.cuda)
            batches = iter(loader)
            seconds = timed(dev, step, batches, sizes.warmup, min(sizes.steps, len(loader) - sizes.warmup))
            del batches, loader
        name = "torchvision alexnet, pytorch/examples, " + ("bf16 autocast" if amp else "fp32")
        record(row(dev, name, data, batch, 1, seconds, peak))


def markdown(meta: dict, rows: list[Row]) -> str:
    lines = [
        f"{meta['device']}, torch {meta['torch']}, torchvision {meta['torchvision']}, {meta['cores']} cores, "
        f"{meta['date']}. Peaks measured here: bf16 {meta['peak_bf16_tflops']:.3g} TFLOP/s, "
        f"{meta['peak_fp_name']} {meta['peak_fp_tflops']:.3g} TFLOP/s. MFU: images/s x 4.35 GFLOP over the bf16 peak.",
        "",
        "| what | data | batch | m | images/s | step | MFU | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.what} | {r.data} | {r.batch} | {r.micro_batches} | {r.images_per_s:,.0f} | "
                     f"{r.step_ms:.1f} ms | {100 * r.mfu:.1f}% | {r.peak_memory_gib:.2f} GiB |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = command.parser("bench.gpu", __doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.md and gpu.json")
    parser.add_argument("--smoke", action="store_true", help="every row at tiny sizes (CI)")
    parser.add_argument("--work", type=Path, help="scratch folder for the JPEGs, the pack and runs (default: a temporary one)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="this trainer's variants, in the order measured (default: all; the last two not in "
                             "ONE_PASS_ONLY are the packed rows)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: 128 and 512 on a GPU)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="the groups of rows, measured in the order given (default: all, as listed)")
    args = parser.parse_args(argv)
    dev = Device()
    sizes = SMOKE if args.smoke else FULL if dev.cuda else CPU
    if args.batches:
        sizes = replace(sizes, batches=tuple(args.batches))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        # Device batches need a pack only to open a trainer: a small one will do.
        on_device = not {"packed", "imagefolder"} & set(args.rows)
        make_jpegs(work / "jpegs", min(256, sizes.jpegs) if on_device else sizes.jpegs, workers=all_cores())
        pack_jpegs(work / "jpegs", work / "pack", workers=all_cores())
        print(f"JPEGs made and packed in {time.perf_counter() - start:.1f} s", flush=True)
        peak_bf16 = matmul_tflops(dev, torch.bfloat16, sizes.matmul, tf32=False)
        peak_fp = matmul_tflops(dev, torch.float32, sizes.matmul, tf32=dev.cuda)
        meta = {
            "device": dev.name(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cores": all_cores(), "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
            "peak_bf16_tflops": peak_bf16, "peak_fp_name": "tf32" if dev.cuda else "fp32", "peak_fp_tflops": peak_fp,
        }
        print(json.dumps(meta), flush=True)
        rows: list[Row] = []

        def record(r: Row) -> None:
            rows.append(r)
            print(f"{r.what:<45} {r.data:<18} batch {r.batch:>4} m {r.micro_batches} {r.images_per_s:>9,.0f} img/s "
                  f"{r.step_ms:8.1f} ms  MFU {100 * r.mfu:5.1f}%  {r.peak_memory_gib:6.2f} GiB", flush=True)
            (args.out / "gpu.json").write_text(json.dumps({"meta": meta, "rows": [asdict(x) for x in rows]}, indent=1))
            (args.out / "gpu.md").write_text(markdown(meta, rows))  # a run cut short keeps every row it measured

        for group in args.rows:
            if group in ("baseline", "imagefolder"):
                measure_examples(dev, work / "jpegs", sizes, peak_bf16, record, group)
            else:
                measure_ours(dev, work / "pack", work, sizes, peak_bf16, record, args.variants, group)
    print("\n" + markdown(meta, rows), flush=True)


if __name__ == "__main__":
    main()
