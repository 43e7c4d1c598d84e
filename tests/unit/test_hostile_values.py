"""Issue 23, class 4: every config value is bounded where it is declared, and every relation between values is
checked before any process group, so no value explodes (tens of gigabytes, a traceback inside the build, C++
frames) once the run has started."""

import re

import pytest

from config.loading import load_config
from config.schema import ConfigError
from tests import bounded
from tests.conftest import ROOT
from tests.unit.config_keys import config_keys
from training.build import check_data

BASE = ROOT / "config.yaml"


@pytest.mark.parametrize("override, message", [
    ("model.lrn_size=100000", "model.lrn_size=100000: must be from 1 to 255"),  # a 38 GB padded window
    ("model.num_classes=1000000000", "model.num_classes=1000000000: must be from 1 to 100000"),
    ("model.lrn_k=0", "model.lrn_k=0.0: must be positive"),
    ("data.synthetic_classes=1000000000", "data.synthetic_classes=1000000000: must be from 2 to 1000"),
    ("data.synthetic_train_images=1000000000", "data.synthetic_train_images=1000000000: must be from 1 to 100000"),
    ("data.workers=100000", "data.workers=100000: must be from 0 to 256"),
    ("data.prefetch=100000", "data.prefetch=100000: must be from 1 to 64"),
    ("parallel.timeout_s=1e-6", "parallel.timeout_s=1e-06: must be from 1 to 31536000"),
    # past what the code represents: timedelta overflows at 8.6e13 s, gloo refuses 1e13 s; seeds are 64-bit
    ("parallel.timeout_s=1e30", "parallel.timeout_s=1e+30: must be from 1 to 31536000"),
    ("parallel.timeout_s=1e13", "parallel.timeout_s=10000000000000.0: must be from 1 to"),
    ("train.seed=18446744073709551616", "train.seed=18446744073709551616: out of range (64-bit integers only)"),
    ("data.workers=-9223372036854775809", "out of range (64-bit integers only)"),
])
def test_a_value_that_would_explode_is_refused_where_it_is_declared(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([BASE], [override])


HARMLESS_WHEN_HUGE = {
    "train.epochs": "a length: the run is long, nothing is allocated by it",
    "train.max_steps": "a length, as epochs",
    "train.seed": "hashed into every seed (model/seeds.py)",
    "train.lr_drops": "a count of drops, each a multiplication",
    "train.plateau_patience": "a count of epochs",
    "train.batch_size": "bounded by the training set, a relation (check_data, below)",
    "train.micro_batches": "bounded by the batch, a relation (plan_from_env: it must divide the batch)",
    "checkpoint.every_steps": "a cadence",
    "checkpoint.keep": "a count of checkpoints; the disk's room for them is checked before the first step",
    "log.every_steps": "a cadence",
}
"""Integer keys whose largest values cost nothing but time, or that a relation between values bounds."""


@pytest.mark.parametrize("key", [k for k in config_keys(int) if k not in HARMLESS_WHEN_HUGE])
def test_every_integer_key_has_an_upper_bound_where_it_is_declared(key):
    """A key added later without a bound fails here until it has one or is listed as harmless with why."""
    with pytest.raises(ConfigError, match=re.escape(f"{key}=")):
        load_config([BASE], [f"{key}={2**62}"])


def test_a_batch_larger_than_the_training_set_is_refused_before_any_process_group(tmp_path):
    words = ["train.batch_size=64", "data.synthetic_train_images=32", "train.device=cpu"]
    with pytest.raises(ConfigError, match="train.batch_size=64 is more than the 32 training images"):
        check_data(load_config([BASE], words))
    done = bounded.program("distributed.main", [*words, "model.num_classes=10", f"log.dir={tmp_path}",
                                                f"checkpoint.dir={tmp_path}/ck", "data.synthetic_cache="])
    assert bounded.one_error_line(done).startswith("error: train.batch_size=64 is more than the 32 training images")
    assert not (tmp_path / "ck").exists()  # refused before the folders were even probed


def test_a_timeout_torch_would_round_to_nothing_is_one_line_not_cpp_frames():
    done = bounded.program("distributed.main", ["describe", "parallel.timeout_s=1e-6"])
    assert bounded.one_error_line(done) == "error: parallel.timeout_s=1e-06: must be from 1 to 31536000"
