"""On a GPU: the loader's pinned ring and side-stream copies give the CPU loader's batches bit for bit, and a
compact pack decoded by nvJPEG in batch is close to libjpeg-turbo's decoding.

Skipped without a GPU; `pytest -m cuda tests` runs them (bench/gpu.sh does, on the device)."""

import pytest
import torch

from data.loader import train_batches
from data.order import EpochOrder
from data.packed import open_packed
from data.transfer import to_device
from tests.test_compact import packs, psnr  # noqa: F401 (packs is the fixture these tests use)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]


def batches(root, device: torch.device, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train = open_packed(str(root)).train
    order = EpochOrder(len(train), 8, seed=2)
    loaded = train_batches(train, order, 0, 12, 0, 1, workers, 2, gpu=device.type == "cuda", timeout_s=60)
    return [(x.cpu(), y.cpu()) for x, y in to_device(loaded, device)]


@pytest.mark.parametrize("workers", [0, 2])
def test_raw_batches_on_the_gpu_are_the_cpu_loaders(packs, workers):  # noqa: F811
    on_gpu, on_cpu = batches(packs["raw"], torch.device("cuda"), workers), batches(packs["raw"], torch.device("cpu"), 0)
    assert len(on_gpu) == len(on_cpu) == 12
    for (x, y), (x1, y1) in zip(on_gpu, on_cpu):
        assert torch.equal(x, x1) and torch.equal(y, y1)


def test_nvjpeg_batches_match_libjpeg_within_a_few_levels(packs):  # noqa: F811
    on_gpu, on_cpu = batches(packs["jpeg"], torch.device("cuda"), 2), batches(packs["jpeg"], torch.device("cpu"), 0)
    for (x, y), (x1, y1) in zip(on_gpu, on_cpu):
        assert torch.equal(y, y1)
        assert psnr(x, x1) > 30, "nvJPEG and libjpeg-turbo decode the same records (their upsampling differs)"
