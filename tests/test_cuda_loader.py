"""On a GPU: the loader's pinned ring and side-stream copies give the CPU loader's batches bit for bit, a
compact pack decoded by nvJPEG in batch is close to libjpeg-turbo's decoding, and the next batch is decoded
while the training thread holds this one. On any machine: the CPU batches these are compared with are each
its own batch.

The GPU tests are skipped without one; `pytest -m cuda tests` runs them (bench/gpu.sh does, on the device)."""

import threading

import pytest
import torch

from data import compact
from data.loader import train_batches
from data.order import EpochOrder
from data.packed import open_packed
from data.transfer import to_device
from tests.image_files import psnr

without_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

STEPS = 12


def loaded(root, device: torch.device, workers: int):
    train = open_packed(str(root)).train
    return train_batches(train, EpochOrder(len(train), 8, seed=2), 0, STEPS, 0, 1, workers, 2,
                         gpu=device.type == "cuda", timeout_s=60)


def batches(root, device: torch.device, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch, copied to the host: on a CPU each batch is a ring slot, which `.cpu()` would not copy."""
    return [(x.to("cpu", copy=True), y.to("cpu", copy=True)) for x, y in to_device(loaded(root, device, workers), device)]


def test_the_cpu_reference_batches_are_each_the_orders_batch(packs):
    """With no loading process the ring has one slot: kept as views, all 12 would be the last batch."""
    train = open_packed(str(packs["raw"])).train
    order = EpochOrder(len(train), 8, seed=2)
    got = batches(packs["raw"], torch.device("cpu"), 0)
    assert len(got) == STEPS
    for step, (x, y) in enumerate(got):
        want_x, want_y = train.load(order.batch(*divmod(step, order.steps_per_epoch)))
        assert torch.equal(x, want_x) and torch.equal(y, want_y), step


@pytest.mark.cuda
@without_gpu
@pytest.mark.parametrize("workers", [0, 2])
def test_raw_batches_on_the_gpu_are_the_cpu_loaders(packs, workers):
    on_gpu, on_cpu = batches(packs["raw"], torch.device("cuda"), workers), batches(packs["raw"], torch.device("cpu"), 0)
    assert len(on_gpu) == len(on_cpu) == STEPS
    for (x, y), (x1, y1) in zip(on_gpu, on_cpu):
        assert torch.equal(x, x1) and torch.equal(y, y1)


@pytest.mark.cuda
@without_gpu
def test_nvjpeg_batches_match_libjpeg_within_a_few_levels(packs):
    on_gpu, on_cpu = batches(packs["jpeg"], torch.device("cuda"), 2), batches(packs["jpeg"], torch.device("cpu"), 0)
    assert len(on_gpu) == len(on_cpu) == STEPS
    for (x, y), (x1, y1) in zip(on_gpu, on_cpu):
        assert torch.equal(y, y1)
        assert psnr(x, x1) > 30, "nvJPEG and libjpeg-turbo decode the same records (their upsampling differs)"


@pytest.mark.cuda
@without_gpu
def test_the_next_batch_is_decoded_while_the_training_thread_holds_this_one(packs, monkeypatch):
    """nvJPEG's batched decode blocks its thread until done: batch j + 1's decode goes on only once the
    consumer holds batch j, which a decode on the training thread, before handing batch j over, never sees."""
    held = [threading.Event() for _ in range(STEPS)]
    decoded = []
    nvjpeg = compact.decode_batch

    def decode_batch(records, device):
        j = len(decoded)
        if j > 0 and not held[j - 1].wait(timeout=60):
            raise AssertionError(f"batch {j} was decoded before batch {j - 1} was handed over")
        decoded.append(j)
        return nvjpeg(records, device)

    monkeypatch.setattr(compact, "decode_batch", decode_batch)
    for j, (x, _) in enumerate(to_device(loaded(packs["jpeg"], torch.device("cuda"), 2), torch.device("cuda"))):
        assert x.is_cuda and x.shape == (8, 3, 256, 256)
        held[j].set()
    assert decoded == list(range(STEPS))
