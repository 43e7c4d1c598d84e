"""The image codecs against each other on the same images: torchvision.io (the path replaced) and TorchCodec
(data/codec.py's choice where installed). One thread, CPU time, the codecs alternated round by round so that
both see the same load; the table for docs/BENCHMARKS.md ("Image codecs").

    .venv/bin/python -m bench.codecs [--images 128] [--rounds 5]

The files: bench.images' photograph-like JPEGs and matplotlib's sample photograph (grace_hopper.jpg, 512x600).
Rows: photograph-sized JPEG files decoded (what packs.prepare and predict do: data/decode.py's decode_file,
whose decoding is the codec's), the paper's 256x256 images encoded as compact records at quality 90 (bytes and
speed), and those records decoded (what a CPU loading process does).
"""

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from matplotlib import cbook

from bench import command
from bench.images import make_jpegs
from data.codec import CODECS
from data.decode import rescale
from data.imageset import SIDE

KINDS = ("decode", "encode", "records")


def _per_cpu_second(work, items: int) -> float:
    """Items per CPU-second of `work()`."""
    start = time.process_time()
    work()
    return items / (time.process_time() - start)


def main() -> None:
    parser = command.parser("bench.codecs", __doc__)
    parser.add_argument("--images", type=int, default=128, help="photograph-like JPEGs to make (bench.images)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", DeprecationWarning)  # torchvision's notice: it is the baseline measured here
    codecs = {name: make() for name, make in CODECS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        make_jpegs(Path(tmp), args.images)
        paths = [*sorted(Path(tmp).rglob("*.jpg")), Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]
        files = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    images = [rescale(codecs["torchvision"].decode_image(f)) for f in files]
    records = {name: [c.encode_jpeg(i, 90) for i in images] for name, c in codecs.items()}
    cpu = torch.device("cpu")
    rates: dict[str, dict[str, list[float]]] = {name: {k: [] for k in KINDS} for name in codecs}
    for _ in range(args.rounds):  # round by round, each codec in turn
        for name, codec in codecs.items():
            work = {"decode": lambda: [codec.decode_image(f) for f in files],
                    "encode": lambda: [codec.encode_jpeg(i, 90) for i in images],
                    "records": lambda: codec.decode_jpegs(records[name], cpu)}
            for kind in KINDS:
                rates[name][kind].append(_per_cpu_second(work[kind], len(files)))
    median = {name: {k: statistics.median(v) for k, v in by_kind.items()} for name, by_kind in rates.items()}
    same = all(torch.equal(a, b) for a, b in zip(records["torchvision"], records["torchcodec"]))
    pixels = all(torch.equal(a, b) for a, b in zip(codecs["torchvision"].decode_jpegs(records["torchvision"], cpu),
                                                    codecs["torchcodec"].decode_jpegs(records["torchvision"], cpu)))
    print(f"{len(files)} JPEG files, {SIDE}x{SIDE} records at quality 90, medians of {args.rounds} rounds; "
          f"records byte-identical: {same}, decoded pixels identical: {pixels}")
    print("| codec | JPEG files decoded per CPU-second | records encoded per CPU-second | bytes per record "
          "| records decoded per CPU-second |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, m in median.items():
        size = sum(len(r) for r in records[name]) / len(images)
        print(f"| {name} | {m['decode']:,.0f} | {m['encode']:,.0f} | {size:,.0f} | {m['records']:,.0f} |")
    print("torchcodec / torchvision: "
          + ", ".join(f"{k} {median['torchcodec'][k] / median['torchvision'][k]:.2f}x" for k in KINDS))


if __name__ == "__main__":
    main()
