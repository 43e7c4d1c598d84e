"""The loader through its ring against the loader before it, both pack encodings, and the trainer through it.

    python -m bench.loader [--images 320] [--batches 40] [--repeats 2] [--photos DIR] [--smoke]

1. The compact encoding: bytes per image, the projected ImageNet pack (1,281,167 training images),
   PSNR against the raw pack, JPEG decoding per CPU core (libjpeg-turbo, one thread), on the
   photograph-like JPEGs made here, and on the images of --photos (any folder of photographs).
2. The loader alone: images/s and the training process's CPU per received batch (its Python thread's
   time.thread_time, and time.process_time of the whole process), for raw and jpeg packs and 1 and 2
   loading processes (4, 8, 16 on a GPU machine), "before" (the loader of commit c1420f8: each batch
   a new shared-memory tensor, rebuilt in the training process) against "ring" (data/loader.py),
   interleaved over --repeats rounds in one run.
3. The trainer's step through the loader (raw and jpeg) against batches already on the device.

On a GPU the rows are the GPU variant (bigger sizes, ring pinned, jpeg decoded by nvJPEG); --smoke
runs every row at tiny sizes on whatever device there is, so CI keeps the script working.
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from bench import command
from bench.gpu import Device, our_trainer, synthetic_batches, timed
from bench.images import all_cores, make_jpegs, pack_jpegs
from data import compact
from data.decode import decode_file
from data.imageset import IMAGE_BYTES, IMAGE_SHAPE
from data.loader import train_batches
from data.order import EpochOrder
from data.packed import open_packed
from data.transfer import to_device
from packs.encoding import Encoding, encode

IMAGENET_TRAIN = 1_281_167


class _Before(Dataset):
    """The loader before the ring (commit c1420f8): each item a new uint8 batch, made shared in the worker
    so that the DataLoader sends it without one more copy, rebuilt as a tensor in the training process."""

    def __init__(self, images, order: EpochOrder, steps: int) -> None:
        self.images, self.order, self.steps = images, order, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.order.batch(*divmod(k, self.order.steps_per_epoch))
        images = torch.empty((len(indices), *IMAGE_SHAPE), dtype=torch.uint8)
        if get_worker_info() is not None:
            images.share_memory_()
        return images, self.images.load_into(indices, images)


def loader(kind: str, train, order: EpochOrder, steps: int, workers: int, device: torch.device):
    gpu = device.type == "cuda"
    if kind == "ring":
        return to_device(train_batches(train, order, 0, steps, 0, 1, workers, 4, gpu), device)
    batches = DataLoader(_Before(train, order, steps), batch_size=None, num_workers=workers, prefetch_factor=4,
                         pin_memory=gpu)
    return ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in batches)


def loader_alone(dev: Device, train, batch: int, batches: int, workers: int, kind: str) -> tuple[float, float, float]:
    """(images/s, training-process thread CPU ms per batch, its process CPU ms per batch) after 4 warm-ups."""
    order = EpochOrder(len(train), batch, seed=0)
    it = loader(kind, train, order, batches + 4, workers, dev.device)
    for _ in range(4):
        next(it)
    dev.sync()
    wall, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
    for _ in range(batches):
        next(it)
    dev.sync()
    wall, thread, process = time.perf_counter() - wall, time.thread_time() - thread, time.process_time() - process
    it.close()
    return batch * batches / wall, 1000 * thread / batches, 1000 * process / batches


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * np.log10(255**2 / (a.double() - b.double()).pow(2).mean().item()))


def compact_table(name: str, images: torch.Tensor) -> list[str]:
    """Bytes per image, ImageNet projection, PSNR and decoding per core at qualities 75-95."""
    lines = []
    for quality in (75, 85, 90, 95):
        records = [encode(image, quality) for image in images]
        start = time.process_time()
        decoded = torch.stack([compact.decode(r) for r in records])
        per_core = len(images) / (time.process_time() - start)
        size = sum(len(r) for r in records) / len(records)
        lines.append(f"| {name} | {len(images)} | {quality} | {size / 1024:.1f} KB | {size * IMAGENET_TRAIN / 1e9:.0f} GB "
                     f"| {IMAGE_BYTES / size:.1f}x | {psnr(decoded, images):.1f} dB | {per_core:,.0f} |")
    return lines


def main() -> None:
    parser = command.parser("bench.loader", __doc__)
    parser.add_argument("--images", type=int, default=None, help="photograph-like JPEGs to pack (320; GPU 12,800)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches of 128 per loader row")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the loader rows, interleaved")
    parser.add_argument("--photos", type=Path, help="a folder of real photographs for the compact table")
    parser.add_argument("--smoke", action="store_true", help="every row at tiny sizes (CI)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the training process's own thread; the loading processes have one each
    dev = Device()
    batch, batches = (8, 2) if args.smoke else (128, args.batches)
    images = args.images or (16 if args.smoke else 12_800 if dev.cuda else 320)
    workers = (1,) if args.smoke else (4, 8, 16) if dev.cuda else (1, 2)
    print(f"{dev.name()}, torch {torch.__version__}; {images} images, batches of {batch}\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_jpegs(work / "jpegs", images, workers=all_cores())
        for encoding in ("raw", "jpeg"):
            pack_jpegs(work / "jpegs", work / encoding, workers=all_cores(), encoding=Encoding(encoding))
        packs = {e: open_packed(str(work / e)).train for e in ("raw", "jpeg")}

        print("| images | n | quality | per image | ImageNet | smaller | PSNR | decoded per CPU-second |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        sample = packs["raw"].load(torch.arange(min(len(packs["raw"]), 128)))[0]
        lines = compact_table("photograph-like (bench.images)", sample)
        if args.photos:
            photos = torch.stack([decode_file(p) for p in sorted(args.photos.iterdir()) if p.is_file()])
            lines += compact_table(f"photographs ({args.photos.name})", photos)
        print("\n".join(lines), "\n")

        rows = [(e, w, k) for e in ("raw", "jpeg") for w in workers for k in ("before", "ring")]
        results: dict[tuple, list] = {r: [] for r in rows}
        repeats = 1 if args.smoke else args.repeats
        for round_ in range(repeats):
            for encoding, w, kind in rows:
                if kind == "before" and encoding == "jpeg":
                    continue  # the loader before could not read a compact pack
                results[encoding, w, kind].append(loader_alone(dev, packs[encoding], batch, batches, w, kind))
            print(f"After round {round_ + 1} of {repeats} (means over the rounds so far):\n")  # a run cut short keeps it
            loader_table(results)
        trainer_rows(dev, work, args.smoke)


def loader_table(results: dict[tuple, list]) -> None:
    print("| pack | loading processes | loader | images/s | thread CPU per batch | process CPU per batch | vs before |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for (encoding, w, kind), got in results.items():
        if got:
            rate, thread, process = (float(np.mean(column)) for column in zip(*got))
            before = results.get((encoding, w, "before"))
            ratio = f"{rate / float(np.mean([g[0] for g in before])):.1f}x" if before else "-"
            print(f"| {encoding} | {w} | {kind} | {rate:,.0f} | {thread:.2f} ms | {process:.2f} ms | {ratio} |")
    print(flush=True)


def trainer_rows(dev: Device, work: Path, smoke: bool) -> None:
    """The trainer's step on device batches, then through the ring on each pack, in one run."""
    batch, warmup, steps = (8, 1, 2) if smoke else (128, 5, 30) if dev.cuda else (32, 1, 4)
    variant = "bf16+channels_last+compile" if dev.cuda and not smoke else "fp32"
    workers = 1 if smoke else 8 if dev.cuda else 1
    torch.set_num_threads(all_cores())  # the step uses every core, as in training
    print(f"| trainer ({variant}, batch {batch}) | data | images/s | vs device batches |")
    print("| --- | --- | ---: | ---: |")
    reference = None
    for data in ("device batches", "raw", "jpeg"):
        trainer = our_trainer(work / ("raw" if data == "device batches" else data), work / "run", variant, batch, 1,
                              workers)

        def step(images, labels):
            trainer.train_step(images, labels)
            trainer.progress.step += 1

        feed = synthetic_batches(dev, batch) if data == "device batches" else trainer.feed(0)
        rate = batch / timed(dev, step, feed, warmup, steps)
        feed.close()
        reference = reference or rate
        print(f"| {variant} | {data} | {rate:,.1f} | {rate / reference:.2f} |")


if __name__ == "__main__":
    main()
