"""A pack is checked whole when opened: each damaged or crafted file is refused there, naming it,
before any process group and never in the middle of an epoch, and nothing in it is run.

The packs are written by hand in the format data/packed.py describes (two classes, three training
images in two shards, one validation image); tests/unit/test_packed.py opens the packer's own output.
"""

import builtins
import json
import os
import re

import numpy as np
import pytest
import torch

from config.loading import load_config
from config.schema import ConfigError
from data.imageset import IMAGE_SHAPE
from data.packed import MAX_STATS_BYTES, open_packed, read_pack_meta
from tests.conftest import ROOT
from tests.pack_files import LABELS, stats
from training.build import check_data


def edit_json(path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def truncate(path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def refused(root, file: str, why: str) -> None:
    """open_packed and read_pack_meta (what check_data runs before any process group) refuse the pack,
    naming the file and why; check_data turns it into a config error."""
    pattern = re.escape(str(root / file)) + ".*" + why
    with pytest.raises(ValueError, match=pattern):
        open_packed(str(root))
    with pytest.raises(ValueError, match=pattern):
        read_pack_meta(str(root))
    with pytest.raises(ConfigError, match=pattern):
        check_data(load_config([ROOT / "config.yaml"], [f"data.root={root}", "model.num_classes=10"]))


def test_the_hand_made_pack_opens(pack):
    data = open_packed(str(pack))
    images, labels = data.train.load(torch.arange(3))
    assert images.shape == (3, *IMAGE_SHAPE) and labels.tolist() == LABELS["train"]
    assert data.classes == ["apple", "pear"] and torch.equal(data.stats.eigenvectors, torch.eye(3))


CORRUPT = {
    "meta.json truncated": (lambda p: truncate(p / "meta.json"), "meta.json", "not valid JSON"),
    "meta.json names not a list": (lambda p: edit_json(p / "meta.json", lambda m: m.update(names="apple")),
                                   "meta.json", "'names' is not a list of 2 class names"),
    "meta.json ids missing": (lambda p: edit_json(p / "meta.json", lambda m: m.pop("ids")),
                              "meta.json", "'ids' is not a non-empty list"),
    "meta.json images a string": (lambda p: edit_json(p / "meta.json", lambda m: m["splits"]["val"].update(images="1")),
                                  "meta.json", "splits.val is not"),
    "index.json truncated": (lambda p: truncate(p / "train/index.json"), "train/index.json", "not valid JSON"),
    "index.json counts not numbers": (lambda p: edit_json(p / "val/index.json", lambda i: i.update(counts=["1"])),
                                      "val/index.json", "'counts' is not a list of image counts"),
    "index.json skipped missing": (lambda p: edit_json(p / "val/index.json", lambda i: i.pop("skipped")),
                                   "val/index.json", "'skipped' is not a list"),
    "index.json counts disagree with meta.json": (
        lambda p: edit_json(p / "train/index.json", lambda i: i.update(counts=[2])),
        "train/index.json", "add up to 2 images, meta.json says 3"),
    "labels.npy truncated": (lambda p: truncate(p / "train/labels.npy"), "train/labels.npy", "not a readable .npy"),
    "labels.npy label out of range": (lambda p: np.save(p / "train/labels.npy", np.array([0, 2, 1])),
                                      "train/labels.npy", r"labels from 0 to 2, outside the 2 classes"),
    "labels.npy negative label": (lambda p: np.save(p / "val/labels.npy", np.array([-1])),
                                  "val/labels.npy", "labels from -1 to -1"),
    "labels.npy int32": (lambda p: np.save(p / "val/labels.npy", np.array([1], dtype=np.int32)),
                         "val/labels.npy", r"holds int32 \(1,\), not int64"),
    "labels.npy one label short": (lambda p: np.save(p / "train/labels.npy", np.array([0, 1])),
                                   "train/labels.npy", r"holds int64 \(2,\), not int64 \(3,\)"),
    "stats.pt truncated": (lambda p: truncate(p / "stats.pt"), "stats.pt", "not a torch.save zip file"),
    "stats.pt wrong shape": (lambda p: torch.save({**stats(), "eigenvectors": torch.eye(4)}, p / "stats.pt"),
                             "stats.pt", r"eigenvectors is not a finite float32 tensor of shape \[3, 3\]"),
    "stats.pt a key missing": (lambda p: torch.save({k: v for k, v in stats().items() if k != "eigenvalues"},
                                                    p / "stats.pt"),
                               "stats.pt", "not the tensors"),
    "stats.pt NaN": (lambda p: torch.save({**stats(), "channel_mean": torch.full((3,), float("nan"))}, p / "stats.pt"),
                     "stats.pt", "channel_mean is not a finite"),
    "stats.pt oversized": (lambda p: os.truncate(p / "stats.pt", MAX_STATS_BYTES + 1), "stats.pt",
                           f"{MAX_STATS_BYTES + 1} bytes, over the {MAX_STATS_BYTES}-byte limit of a statistics file"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_a_damaged_pack_is_refused_when_opened_naming_the_file(pack, case):
    damage, file, why = CORRUPT[case]
    damage(pack)
    refused(pack, file, why)


class Exec:
    """Pickles as builtins.exec(code that creates the marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_stats_file_with_a_pickle_payload_is_refused_and_never_run(pack, tmp_path):
    marker = tmp_path / "ran"
    torch.save({**stats(), "eigenvalues": Exec(marker)}, pack / "stats.pt")
    refused(pack, "stats.pt", "refused by torch.load.*nothing in it run.*GLOBAL exec")
    assert not marker.exists()
    torch.load(pack / "stats.pt", weights_only=False)  # the payload is real: a plain unpickler runs it
    assert marker.exists()


def test_labels_holding_a_pickle_are_refused_unread(pack, tmp_path):
    marker = tmp_path / "ran"
    np.save(pack / "val/labels.npy", np.array([Exec(marker)], dtype=object), allow_pickle=True)
    refused(pack, "val/labels.npy", "an array of Python objects")
    assert not marker.exists()
