"""The names and small files every reader (data/) and writer (packs/) of a pack shares; data/packed.py
describes the format."""

import json
from pathlib import Path
from typing import Any

import files

FORMAT = "alexnet-packed"
VERSION = 2
"""Version 2 names the images' encoding in meta.json (raw or jpeg); version 1 packs are raw and still open."""
VERSIONS = (1, 2)
SPLITS = ("train", "val")
JPEG = "jpeg"
RAW = "raw"
ENCODINGS = (RAW, JPEG)
"""A pack's `encoding` in meta.json: raw uint8 rows (the exact reference) or JPEG records."""
MAKE_ONE = "make one with python -m packs.prepare SRC DST"
MAX_JSON_BYTES = 16 * 2**20
"""Largest JSON file read; ImageNet's meta.json is about 40 KB, an index.json listing every skipped file under 1 MB."""
SHARD_SUFFIX = {RAW: ".u8", JPEG: ".jpgs"}
"""Raw shards are uint8 rows; compact shards are JPEG records end to end (not one .jpg file, hence .jpgs)."""


def shard_name(shard: int, encoding: str = RAW) -> str:
    """The images file of shard `shard`; its sidecar has the same stem and the suffix .pt."""
    return f"images_{shard:05d}{SHARD_SUFFIX[encoding]}"


def read_json(path: Path) -> Any:
    """A JSON file of a pack, refused (naming it, a ValueError) when not a regular file, larger than
    MAX_JSON_BYTES or not JSON."""
    return files.read_json(path, MAX_JSON_BYTES, "a pack's JSON file")


def write_json(path: Path, value: dict) -> None:
    """Replace `path` atomically, so an interrupted run never leaves half a file behind."""
    files.write_atomic(path, json.dumps(value, indent=1))
