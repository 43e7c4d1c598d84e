"""The compact pack (JPEG records, data/compact.py) against the raw one made from the same files: pixels within
the stated PSNR, the same batches in one process and two tower processes, a resume bitwise, damage refused."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.images import make_jpegs
from bench.workers import run_workers
from config.errors import UserError
from data.compact import MAX_RECORD_BYTES, DamagedImage
from data.imageset import IMAGE_BYTES
from data.loader import train_batches
from data.order import EpochOrder
from data.packed import open_packed
from distributed import layout
from distributed.feed import training_batches
from packs.encoding import Encoding
from packs.prepare import prepare
from tests.conftest import ROOT
from tests.processes import CPU_ENV
from tests.trainer_runs import small_config, small_words

PSNR_DB = 35.0
"""docs/DATA.md: quality 90 measured 37.7 dB on photograph-like images; this is the floor tested."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    """The same 40 photograph-sized JPEGs (8 classes), packed raw and as JPEG records; the val split is
    the training folder again."""
    root = tmp_path_factory.mktemp("compact")
    make_jpegs(root / "jpegs", 40)
    files = sorted(p.relative_to(root / "jpegs") for p in (root / "jpegs").rglob("*.jpg"))
    val = root / "val"
    val.mkdir()
    for f in files[:4]:
        (val / f.name).write_bytes((root / "jpegs" / f).read_bytes())
    (root / "val.txt").write_text("".join(f"{f.name} {f.parent}\n" for f in files[:4]))
    out = {}
    for name in ("raw", "jpeg"):
        out[name] = root / name
        prepare(root / "jpegs", out[name], val, root / "val.txt", workers=2, shard_size=16, encoding=Encoding(name))
    return out


def everything(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    train = open_packed(str(root)).train
    return train.load(torch.arange(len(train)))


def test_jpeg_pack_is_a_fraction_of_raw_and_within_the_stated_psnr(packs):
    (raw, raw_labels), (jpeg, jpeg_labels) = everything(packs["raw"]), everything(packs["jpeg"])
    assert torch.equal(raw_labels, jpeg_labels)
    assert psnr(jpeg, raw) >= PSNR_DB
    stored = sum(p.stat().st_size for p in (packs["jpeg"] / "train").glob("*.jpgs"))
    assert stored < len(raw) * IMAGE_BYTES / 5
    # The statistics are the decoded images' (what the loader gives), not the raw ones'.
    assert torch.allclose(open_packed(str(packs["jpeg"])).stats.mean_image, jpeg.double().mean(0).float(), atol=1e-3)


def test_a_resume_reads_the_same_batches_bitwise(packs):
    data = open_packed(str(packs["jpeg"]))
    order = EpochOrder(len(data.train), 8, seed=5)
    whole = [x.clone() for x, _ in train_batches(data.train, order, 0, 10, 0, 1, 1, 2)]
    resumed = [x.clone() for x, _ in train_batches(data.train, order, 6, 10, 0, 1, 0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(whole[6:], resumed, strict=True))


def _tower_batches(rank: int, world: int, pack: str, out: str) -> None:
    cfg = small_config(Path(out), f"data.root={pack}", "data.workers=1", "model.num_classes=8", "train.batch_size=8")
    run = layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s)
    try:
        data = open_packed(pack)
        order = EpochOrder(len(data.train), cfg.train.batch_size, cfg.train.seed)
        got = [(x.clone(), y.clone()) for x, y in training_batches(data.train, order, cfg, run, 0, 6)]
        torch.save(got, f"{out}/batches{rank}_of_{world}.pt")
    finally:
        layout.stop()


def test_two_tower_processes_see_the_batches_one_process_sees(packs, tmp_path):
    run_workers(2, _tower_batches, str(packs["jpeg"]), str(tmp_path), init=False)
    _tower_batches(0, 1, str(packs["jpeg"]), str(tmp_path))
    one, *two = (torch.load(tmp_path / f"batches{name}.pt") for name in ("0_of_1", "0_of_2", "1_of_2"))
    for tower in two:
        assert len(tower) == len(one) == 6
        for (x, y), (x1, y1) in zip(tower, one):
            assert torch.equal(x, x1) and torch.equal(y, y1)


def damage(pack: Path, image: int, how: str) -> None:
    """Spoil training image `image`'s record in its shard (16 images a shard)."""
    lengths = np.load(pack / "train/lengths.npy")
    shard, at = divmod(image, 16)
    start = int(lengths[shard * 16 : image].sum())
    path = pack / f"train/images_{shard:05d}.jpgs"
    data = bytearray(path.read_bytes())
    if how == "garbage":
        data[start : start + int(lengths[image])] = bytes(int(lengths[image]))
    else:  # a frame header declaring 4096x4096: a decompression bomb
        sof = data.index(b"\xff\xc0", start)
        data[sof + 5 : sof + 9] = (4096).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how, why", [("garbage", "not a JPEG record"), ("huge", "its header declares 4096x4096, not 256x256")])
def test_a_damaged_record_is_refused_naming_pack_shard_and_image(packs, tmp_path, how, why):
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(packs["jpeg"], pack)
    damage(pack, 19, how)
    data = open_packed(str(pack))  # the record's length and the shard's size are still right
    expected = re.escape(f"{pack}: train image 19 (images_00001.jpgs, image 3 of the shard) cannot be read: ") + why
    with pytest.raises(DamagedImage, match=expected):
        data.train.load(torch.tensor([18, 19]))
    cfg = small_config(tmp_path, f"data.root={pack}", "data.workers=1", "model.num_classes=8", "train.batch_size=40")
    order = EpochOrder(len(data.train), 40, 0)
    with pytest.raises(UserError, match=expected):
        next(training_batches(data.train, order, cfg, layout.start(layout.plan_from_env(cfg), 30), 0, 1))


def test_lengths_past_the_cap_or_the_shard_are_refused_when_opened(packs, tmp_path):
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(packs["jpeg"], pack)
    lengths = np.load(pack / "train/lengths.npy")
    lengths[3] = MAX_RECORD_BYTES + 1
    np.save(pack / "train/lengths.npy", lengths)
    with pytest.raises(ValueError, match=f"lengths.npy: has record lengths from .* to {MAX_RECORD_BYTES + 1}, outside"):
        open_packed(str(pack))
    lengths[3] -= MAX_RECORD_BYTES  # within the cap, but the shard's records no longer add up to its file
    np.save(pack / "train/lengths.npy", lengths)
    with pytest.raises(ValueError, match=r"images_00000.jpgs: expected 16 images \(\d+ bytes\), found \d+ bytes"):
        open_packed(str(pack))


@pytest.mark.timeout(120)
def test_a_run_on_a_damaged_pack_stops_with_one_line(packs, tmp_path):
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(packs["jpeg"], pack)
    for image in range(40):
        damage(pack, image, "garbage")
    words = small_words(tmp_path, f"data.root={pack}", "data.workers=1", "model.num_classes=8", "train.batch_size=8")
    done = subprocess.run([sys.executable, "-m", "distributed.main", *words], cwd=ROOT, env=CPU_ENV,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {pack}: train image "), done.stderr[-3000:]
