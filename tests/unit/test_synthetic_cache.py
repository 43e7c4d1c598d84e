"""The embedded data's cache: packed once, read back exactly, packed anew when what it depends on changes."""

import multiprocessing
from dataclasses import replace

import torch

from config.data import DataConfig
from data import synthetic
from packs import synthetic_cache
from packs.synthetic_cache import BUILDING
from training import datasets
from training.datasets import open_datasets

SMALL = dict(synthetic_classes=3, synthetic_train_images=10, synthetic_val_images=4)


def assert_same_data(got, expected) -> None:
    """Every image, label and statistic of two Datasets equal, bit for bit."""
    assert got.classes == expected.classes
    for split in ("train", "val"):
        a, b = getattr(got, split), getattr(expected, split)
        assert len(a) == len(b)
        everything = torch.arange(len(b))
        for x, y in zip(a.load(everything), b.load(everything)):
            assert torch.equal(x, y), split
    for key, value in expected.stats.as_dict().items():
        assert torch.equal(got.stats.as_dict()[key], value), key


def entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != synthetic_cache.LOCK_FILE)


def test_a_cache_hit_reads_exactly_the_generated_images_and_stats(tmp_path, monkeypatch):
    cfg = DataConfig(**SMALL, synthetic_cache=str(tmp_path / "cache"))
    drawn = open_datasets(replace(cfg, synthetic_cache=""), seed=5)
    assert_same_data(open_datasets(cfg, seed=5), drawn)  # packed on this first use

    def drawing_again(*args):
        raise AssertionError("a cache hit drew the images again")

    # A hit neither packs nor draws: the images and the statistics come from the pack on disk.
    monkeypatch.setattr(synthetic_cache, "pack", drawing_again)
    monkeypatch.setattr(datasets, "SyntheticImages", drawing_again)
    assert_same_data(open_datasets(cfg, seed=5), drawn)
    assert len(entries(tmp_path / "cache")) == 1


def test_another_seed_size_or_generator_packs_anew(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = DataConfig(**SMALL, synthetic_cache=str(cache))
    first = synthetic_cache.synthetic_pack(cfg, seed=0)
    changed = [(replace(cfg, synthetic_train_images=12), 0), (replace(cfg, synthetic_val_images=5), 0),
               (replace(cfg, synthetic_classes=4), 0), (cfg, 1)]
    for other, seed in changed:
        assert synthetic_cache.synthetic_pack(other, seed) != first
        assert_same_data(open_datasets(other, seed), open_datasets(replace(other, synthetic_cache=""), seed))
    # An edit of the code that draws the images (here a comment added to a copy) names another pack.
    edited = tmp_path / "synthetic.py"
    edited.write_text(open(synthetic.__file__).read() + "# edited\n")
    monkeypatch.setattr(synthetic, "__file__", str(edited))
    assert synthetic_cache.synthetic_pack(cfg, seed=0) != first
    assert len(entries(cache)) == len(changed) + 2


def test_what_a_killed_build_left_is_removed(tmp_path):
    cfg = DataConfig(**SMALL, synthetic_cache=str(tmp_path))
    # A build killed mid-way (of another seed, here) leaves its folder under the temporary name, without meta.json.
    leftover = tmp_path / (synthetic_cache.cache_name(cfg, 1) + BUILDING)
    (leftover / "train").mkdir(parents=True)
    (leftover / "train" / "images_00000.u8").write_bytes(b"\0" * 100)
    assert_same_data(open_datasets(cfg, 0), open_datasets(replace(cfg, synthetic_cache=""), 0))
    assert entries(tmp_path) == [synthetic_cache.cache_name(cfg, 0)]


def _open_at_once(cfg: DataConfig, barrier, results) -> None:
    # One thread, as in a DataLoader worker: a fork of a process whose torch has run threads can hang in its
    # first parallel op otherwise.
    torch.set_num_threads(1)
    barrier.wait()  # both processes ask for the missing pack in the same instant
    results.put(str(synthetic_cache.synthetic_pack(cfg, seed=2)))


def test_two_processes_packing_at_once_leave_one_valid_pack(tmp_path):
    cfg = DataConfig(**SMALL, synthetic_cache=str(tmp_path))
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(cfg, barrier, results)) for _ in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    paths = {results.get(timeout=5), results.get(timeout=5)}
    assert len(paths) == 1 and entries(tmp_path) == [synthetic_cache.cache_name(cfg, 2)]
    assert_same_data(open_datasets(cfg, 2), open_datasets(replace(cfg, synthetic_cache=""), 2))
