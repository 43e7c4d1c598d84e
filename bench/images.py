"""The benchmarks' images: photograph-sized JPEGs in class folders, the same images packed, and the
pytorch/examples ImageFolder pipeline that reads the JPEGs. Both pipelines of a comparison read these."""

import os
import shutil
from multiprocessing import Pool
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from data.codec import CODEC
from packs.encoding import Encoding
from packs.prepare import prepare

CLASSES = 8


def _make_jpeg(args: tuple[Path, int]) -> None:
    root, i = args
    rng = torch.Generator().manual_seed(i)  # each image from its own seed: the same set whatever the workers
    height, width = 330 + int(torch.randint(41, (), generator=rng)), 380 + int(torch.randint(41, (), generator=rng))
    coarse = torch.rand(1, 3, 6, 6, generator=rng) * 255
    image = torch.nn.functional.interpolate(coarse, (height, width), mode="bicubic")[0]
    image = image + torch.randn(3, height, width, generator=rng) * 12
    path = root / f"class_{i % CLASSES}" / f"{i:05d}.jpg"
    path.write_bytes(CODEC.encode_jpeg(image.clamp(0, 255).to(torch.uint8), 90).numpy().tobytes())


def make_jpegs(root: Path, count: int, workers: int = 1) -> None:
    """`count` JPEGs of about 400x350 (ImageNet's typical size) in CLASSES folders: smooth colour
    fields plus grain, like photographs."""
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(root, i) for i in range(count)]
    if workers > 1:
        torch.set_num_threads(1)
        with Pool(workers) as pool:
            pool.map(_make_jpeg, jobs, chunksize=64)
    else:
        for job in jobs:
            _make_jpeg(job)


def pack_jpegs(jpegs: Path, pack: Path, workers: int, encoding: Encoding = Encoding()) -> None:
    """Pack the JPEG folders with packs.prepare, storing images as `encoding`. A pack needs a validation
    split to open: the first image of each class, labelled by file name."""
    val = pack.parent / f"{pack.name}-val"
    val.mkdir(parents=True, exist_ok=True)
    firsts = [sorted(folder.iterdir())[0] for folder in sorted(jpegs.iterdir())]
    for path in firsts:
        shutil.copy(path, val / path.name)
    labels = pack.parent / f"{pack.name}-val.txt"
    labels.write_text("".join(f"{p.name} {p.parent.name}\n" for p in firsts))
    prepare(jpegs, pack, val, labels, workers=workers, encoding=encoding)


def examples_loader(folder: Path, batch: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """pytorch/examples imagenet/main.py's training pipeline: ImageFolder decoding each file with PIL,
    RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize, shuffled through a DataLoader."""
    transform = transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    images = datasets.ImageFolder(str(folder), transform=transform)
    return DataLoader(images, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin_memory, drop_last=True)


def all_cores() -> int:
    return os.cpu_count() or 1
