"""Images per second per core: packed shards + batch augmentation against ImageFolder + PIL transforms.

    python -m bench.data_pipeline [--images 2048] [--batch 128] [--epochs 2]

Both pipelines read the same JPEGs, made here at about 400x350 (ImageNet's typical
size), and end with float batches of network-sized patches:

- baseline: torchvision ImageFolder decoding each file with PIL, then
  RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize, through a DataLoader;
- packed: the files packed once (packs/prepare.py), batches read by data/loader.py,
  then data/augment.py's Augmenter.train (mean, PCA colour, crop 227, flip) on the CPU;
- packed, load only: the same without Augmenter.train, i.e. the CPU work per image
  left when the augmentation runs on the accelerator, as it does in training.

"Per core" is images per CPU-second: the CPU time of this process and its loading
processes together (getrusage), so a configuration is charged for every core it keeps
busy, whatever the machine's core count.
"""

import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench import command
from bench.images import examples_loader, make_jpegs, pack_jpegs
from config.data import DataConfig
from data.augment import Augmenter
from data.loader import train_batches
from data.order import EpochOrder
from data.packed import open_packed


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers are joined at the end of an epoch)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(epoch_batches, epochs: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, images) over `epochs` calls of epoch_batches(epoch), after one warm-up epoch."""
    for _ in epoch_batches(-1):
        pass
    wall, cpu, images = time.perf_counter(), cpu_seconds(), 0
    for epoch in range(epochs):
        for batch in epoch_batches(epoch):
            images += len(batch)
    return time.perf_counter() - wall, cpu_seconds() - cpu, images


def baseline(folder: Path, batch: int, workers: int):
    def epoch_batches(epoch: int):
        return (x for x, _ in examples_loader(folder, batch, workers))

    return epoch_batches


def packed(root: Path, batch: int, workers: int, augment: bool):
    data = open_packed(str(root))
    order = EpochOrder(len(data.train), batch, seed=0)
    augmenter = Augmenter.from_config(data.stats, DataConfig(), 227, torch.device("cpu"))
    rng = torch.Generator().manual_seed(0)

    def epoch_batches(epoch: int):
        first = max(epoch, 0) * order.steps_per_epoch
        loaded = train_batches(data.train, order, first, first + order.steps_per_epoch, 0, 1, workers, prefetch=4)
        return (augmenter.train(x, rng) if augment else x for x, _ in loaded)

    return epoch_batches


def main() -> None:
    parser = command.parser("bench.data_pipeline", __doc__)
    parser.add_argument("--images", type=int, default=2048, help="JPEGs to make and read")
    parser.add_argument("--batch", type=int, default=128, help="images per batch")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes over the images per configuration")
    args = parser.parse_args()
    # One thread in this process: "one loading process" then means one core.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        jpegs, pack = Path(tmp) / "jpegs", Path(tmp) / "pack"
        make_jpegs(jpegs, args.images)
        start = time.perf_counter()
        pack_jpegs(jpegs, pack, workers=os.cpu_count())
        packing = time.perf_counter() - start

        runs = [
            ("ImageFolder + PIL transforms", 0, baseline(jpegs, args.batch, 0)),
            ("ImageFolder + PIL transforms", 2, baseline(jpegs, args.batch, 2)),
            ("packed + Augmenter.train on CPU", 0, packed(pack, args.batch, 0, augment=True)),
            ("packed + Augmenter.train on CPU", 1, packed(pack, args.batch, 1, augment=True)),
            ("packed, load only (augment on GPU)", 0, packed(pack, args.batch, 0, augment=False)),
            ("packed, load only (augment on GPU)", 1, packed(pack, args.batch, 1, augment=False)),
        ]
        print(f"{args.images} JPEGs, batch {args.batch}, {args.epochs} timed epochs; torch {torch.__version__}, "
              f"{os.cpu_count()} cores; packing took {packing:.1f} s ({args.images / packing:.0f} images/s)\n")
        print("| pipeline | loader processes | images/s | CPU s per 1k images | images/s per core | vs baseline, per core |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        reference = None
        for name, workers, epoch_batches in runs:
            wall, cpu, images = measure(epoch_batches, args.epochs)
            per_core = images / cpu
            reference = reference or per_core
            print(f"| {name} | {workers} | {images / wall:,.0f} | {1000 * cpu / images:.2f} | {per_core:,.0f} | {per_core / reference:.1f}x |")


if __name__ == "__main__":
    main()
