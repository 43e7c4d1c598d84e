"""Issue 31, class 3: sizes derived from several values (the loaders' rings, the run's steps) are checked with
the values, before any process starts, against the machine where it matters.

Each value is bounded where it is declared (tests/unit/test_hostile_values.py); these are the products of
values within their bounds that would still explode once the run had started: 256 loading processes x 64
batches ahead asked for 412 GB of shared memory, and 2^63 - 1 epochs overflowed the loader's length.
"""

import dataclasses
import shutil

import pytest

from config.loading import load_config
from config.schema import ConfigError
from data.imageset import IMAGE_BYTES
from data.ring import BatchRing, ring_bytes, ring_slots, shared_memory_room
from distributed import layout
from tests import bounded
from tests.conftest import ROOT
from training.build import check_data, check_memory

BASE = ROOT / "config.yaml"


def test_a_ring_takes_the_bytes_ring_bytes_says():
    """ring_bytes against what BatchRing allocates (its labels, lengths and indices beside the images)."""
    ring = BatchRing(ring_slots(2, 3), 4, 2)
    held = sum(t.nbytes for t in (ring.images, ring.labels, ring.lengths, ring.indices))
    assert held == ring_bytes(2, 3, 4) == 7 * 4 * (IMAGE_BYTES + 24)


def test_the_room_for_rings_is_dev_shm_s_free_space_within_the_machine_s_memory():
    room, what = shared_memory_room()
    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    assert 0 < room <= total
    if what.startswith("free in /dev/shm"):
        assert abs(room - shutil.disk_usage("/dev/shm").free) < 2**30  # others use it meanwhile


def test_rings_past_the_shared_memory_are_refused_before_any_process_group():
    cfg = load_config([BASE], ["data.workers=256", "data.prefetch=64", "train.batch_size=32", "train.device=cpu"])
    plan = layout.plan_from_env(cfg, {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_WORLD_SIZE": "4"})
    needed = 2 * 2 * ring_bytes(256, 64, 16)  # two loading processes here (4 tower processes), two rings each
    room, what = shared_memory_room()
    assert needed > room
    with pytest.raises(ConfigError, match=f"^data.workers=256 x data.prefetch=64: 2 loading process\\(es\\) with rings of "
                                          f"16385 batches of 16 images, for training and validation, take "
                                          f"{needed / 1e9:.1f} GB of shared memory, more than the {room / 1e9:.1f} GB "
                                          f"{what}; lower data.workers or data.prefetch$"):
        check_memory(cfg, plan)
    check_memory(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=1, prefetch=4)), plan)


def test_the_run_refuses_them_in_one_line(tmp_path):
    words = ["data.workers=256", "data.prefetch=64", "train.device=cpu", f"log.dir={tmp_path}",
             f"checkpoint.dir={tmp_path}/ck"]
    line = bounded.one_error_line(bounded.program("distributed.main", words, timeout=120))
    assert line.startswith("error: data.workers=256 x data.prefetch=64: 1 loading process(es) with rings of 16385 "
                           "batches of 128 images"), line
    assert not (tmp_path / "ck").exists()  # refused before the run's folders are touched


def test_a_run_longer_than_a_step_counter_is_refused_before_any_process_group():
    cfg = load_config([BASE], ["train.epochs=9223372036854775807", "train.device=cpu"])
    with pytest.raises(ConfigError, match="^train.epochs=9223372036854775807 of 10 steps is 92233720368547758070 "
                                          "steps, more than the 9223372036854775807 a run can count; lower "
                                          "train.epochs or set train.max_steps$"):
        check_data(cfg)
    check_data(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=1000)))  # bounded by max_steps
