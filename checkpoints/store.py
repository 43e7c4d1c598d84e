"""Checkpoints that load into any layout, written so a crash mid-write loses nothing: each a
`step_XXXXXXXX` folder of entries named by tower, written as `.partial` and renamed once every process
has finished, complete only once rank 0 has written `checkpoint.json` (MARKER) last, which pruning
removes first (the whole protocol: docs/ARCHITECTURE.md, "Checkpoints")."""

import json
import os
import re
import shutil
from contextlib import suppress
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import files
from checkpoints import shards
from checkpoints.recorded_model import UnreadableRecord, check_recorded, record
from checkpoints.tensor_file import OtherTensors, UnreadableFile, spec_bytes
from config.errors import UserError
from config.model import ModelConfig
from distributed.reductions import barrier
from model.alexnet import AlexNet

_NAME = re.compile(r"^step_(\d{8})$")
_PARTIAL_NAME = re.compile(r"^step_\d{8}\.partial$")
MARKER = "checkpoint.json"
"""Written last, removed first: a checkpoint folder is complete exactly when it holds it. It names the format."""
FORMAT = {"format": "safetensors files of torch.distributed.checkpoint.HuggingFaceStorageWriter", "version": 1}
MAX_JSON_BYTES = 4096
"""Largest model.json or checkpoint.json read (the paper's model.json is 255 bytes)."""
EARLIER_FORMAT = ".metadata"
"""What a folder in the earlier format holds (DCP's FileSystemWriter metadata, a pickle)."""
MODEL_FILE = "model.json"
"""The ModelConfig the weights were trained with, as JSON, in each checkpoint folder."""
PARTIAL = ".partial"
BROKEN = ".broken"
COUNTERS_BYTES = 2**20
"""Room for what a checkpoint's components save beside weights and velocity (a step, a schedule: bytes)."""


class CheckpointError(OSError):
    """A checkpoint cannot be written (no room on the disk); nothing already saved is lost."""


class BrokenCheckpoint(UserError):
    """A complete-looking checkpoint whose files cannot be read (truncated, missing, corrupt, unsafe).
    Not an architecture that differs: that is refused as a plain UserError."""


def is_writer() -> bool:
    """Whether this process writes what is written once (the folders, their marks, pruning, setting aside)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None."""
    done = complete(directory)
    return done[-1] if done else None


def step_of(checkpoint: Path) -> int:
    """The step a checkpoint folder holds, from its name."""
    return int(_NAME.match(checkpoint.name).group(1))


def complete(directory: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.match(p.name) and is_checkpoint(p)), key=lambda p: p.name)


def is_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` is a complete checkpoint; a UserError if it is one in the earlier, pickled format."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    if (folder / EARLIER_FORMAT).is_file():
        raise UserError(
            f"{folder} is a checkpoint in the earlier format (DCP's pickled {EARLIER_FORMAT} and .distcp files), "
            "which this version does not read, since reading it means unpickling it: export its weights with the "
            "version that wrote it (python -m results export: a .safetensors file this version reads), or move it "
            "out of the way"
        )
    return False


def save(state: dict, directory: str | Path, step: int, keep: int, model: ModelConfig | None = None) -> Path:
    """Write `state` (every process its own entries) as checkpoint `step`, with `model` as model.json,
    then prune to `keep`. Ctrl-C on any process removes the partial folder and raises KeyboardInterrupt
    on every process."""
    root = Path(directory)
    final = root / f"step_{step:08d}"
    partial = root / (final.name + PARTIAL)
    try:
        if is_writer():
            files.create_root(root)
            _clear_leftovers(root)
            files.make_folder(partial)  # a real folder, made here: DCP's writers then find it and write into it
        barrier()
        shards.write(state, partial)  # returns once every process has written its file
        if is_writer():
            if model is not None:
                files.write_atomic(partial / MODEL_FILE, record(model))
            files.write_atomic(partial / MARKER, json.dumps(FORMAT) + "\n")
        barrier()
    except BaseException as err:
        # DCP hands a failure on any process (Ctrl-C included) to every process, so all of them land
        # here. (A lost peer raises a distributed error instead, reported as such by distributed.main.)
        # Every process removes the partial folder: each creates it when it plans its writes, so one
        # interrupted early can create it after the writer has removed it.
        with suppress(files.Refused):
            files.remove(partial)
        if isinstance(err, KeyboardInterrupt) or _interrupted(err):
            raise KeyboardInterrupt from None
        if not isinstance(err, (dcp.CheckpointException, OSError)):
            raise
        free = shutil.disk_usage(root).free / 1e9
        raise CheckpointError(
            f"could not write checkpoint {final} ({free:.2f} GB free there); the older checkpoints are kept: "
            f"{_causes(err)}"
        ) from err
    if is_writer():
        _remove(final)
        files.rename(partial, final)
        for old in complete(root)[:-keep]:
            _remove(old)
    barrier()
    return final


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder, its completeness mark first: killed midway, what is left is ignored. A link
    (a checkpoint of another run, linked in) is unlinked, and what it leads to is left whole."""
    files.remove(folder, first=[MARKER])


def _clear_leftovers(root: Path) -> None:
    """Remove what killed writes and prunes left: partial folders, and step folders without their mark.
    Safe because the run owns the folder (checkpoints/folder.py): no other run is writing there."""
    for entry in root.iterdir():
        torn = _NAME.match(entry.name) and entry.is_dir() and not (entry / MARKER).is_file() \
            and not (entry / EARLIER_FORMAT).is_file()
        if torn or _PARTIAL_NAME.match(entry.name):
            files.remove(entry)


def set_aside(folder: Path) -> Path:
    """Rename a checkpoint that does not load to `step_N.broken` (or .broken.2, ...): kept for a look, never read."""
    aside, n = folder.with_name(folder.name + BROKEN), 1
    while os.path.lexists(aside):
        n += 1
        aside = folder.with_name(f"{folder.name}{BROKEN}.{n}")
    return files.rename(folder, aside)


def _interrupted(err: BaseException) -> bool:
    """A DCP failure that is some process's Ctrl-C (DCP catches BaseException and passes it around)."""
    if not isinstance(err, dcp.CheckpointException):
        return False
    return any(isinstance(exc, KeyboardInterrupt) for exc, _ in err.failures.values())


def _causes(err: BaseException) -> str:
    """Each failing process's own error, without the traceback DCP's exception prints."""
    if isinstance(err, dcp.CheckpointException):
        return "; ".join(f"rank {rank}: {exc!r}" for rank, (exc, _) in err.failures.items())
    return repr(err)


def check_model(path: str | Path, model: ModelConfig) -> None:
    """Refuse (UserError) a checkpoint whose model.json records another architecture, naming each key with
    both values, or that has none: without it, the weights of another architecture with the same shapes
    (another LRN or pooling, say) would be used, and resumed into, as this one. Reads no weights, so a
    command can call it before any process group starts."""
    recorded = Path(path) / MODEL_FILE
    if not os.path.lexists(recorded):
        raise UserError(f"{recorded}: missing, so the architecture of checkpoint {path} is unknown; only checkpoints "
                        "written by this project's training are read")
    try:
        text = bytes(files.read_capped(recorded, MAX_JSON_BYTES, f"a checkpoint's {MODEL_FILE}"))
    except files.Refused as err:
        raise BrokenCheckpoint(f"checkpoint {path}: {MODEL_FILE} cannot be read: {err}") from None
    try:
        check_recorded("checkpoint", path, text, model)
    except UnreadableRecord as err:
        raise BrokenCheckpoint(f"{err} ({MODEL_FILE})") from None


def _check_marker(path: Path) -> None:
    """The folder's MARKER names the format read here (a later format is refused, not misread)."""
    try:
        written = files.read_json(path / MARKER, MAX_JSON_BYTES, f"a checkpoint's {MARKER}")
    except files.Refused as err:
        raise BrokenCheckpoint(f"checkpoint {path}: {MARKER} cannot be read: {err}") from None
    if written != FORMAT:
        raise UserError(f"checkpoint {path} is in another format ({MARKER}: {written!r:.200}); this version reads "
                        f"{FORMAT!r}")


def max_data_bytes(state: dict, model: ModelConfig | None) -> int:
    """Most tensor data a checkpoint's files may hold together, so that none is mapped past it: the weights
    and velocity of every tower of `model`, and COUNTERS_BYTES. Without a model config (tests, benchmarks),
    four times what `state` asks for: both towers' weights and velocity when one tower's weights are asked."""
    if model is None:
        return 4 * sum(spec_bytes(spec) for spec in shards.flat_specs(state).values()) + COUNTERS_BYTES
    with torch.device("meta"):
        weights = sum(t.nbytes for t in AlexNet(model).state_dict().values())
    return 2 * weights + COUNTERS_BYTES


def load(state: dict, path: str | Path, model: ModelConfig | None = None) -> None:
    """Fill `state`'s tensors in place from the checkpoint at `path` (checkpoints/shards.py: every header
    checked, nothing unpickled). With `model`, a checkpoint that recorded another architecture, or none, is
    refused (check_model); files that cannot be read, or that do not hold what the recorded config says,
    raise BrokenCheckpoint."""
    path = Path(path)
    recorded = model is not None
    if recorded:
        check_model(path, model)
    _check_marker(path)
    try:
        shards.read(state, path, max_data_bytes(state, model))
    except UnreadableFile as err:
        raise BrokenCheckpoint(f"checkpoint {path} cannot be read: {err}") from None
    except OtherTensors as err:
        if recorded:  # the architecture matched: the files themselves are wrong
            raise BrokenCheckpoint(f"checkpoint {path} does not hold what its {MODEL_FILE} describes: {err}") from None
        raise UserError(f"checkpoint {path} does not match this model (was it saved with another model config?): "
                        f"{err}") from None
    except dcp.CheckpointException as err:  # a BaseException: per-rank failures
        # DCP names the phase that failed: "read" is the files (changed since they were checked); "plan" is
        # keys and shapes that differ from this model's (torch 2.11-2.14).
        if err.args and err.args[0] == "read":
            raise BrokenCheckpoint(f"checkpoint {path} cannot be read (a file truncated or missing): {_causes(err)}") from None
        raise UserError(
            f"checkpoint {path} does not match this model (was it saved with another model config?): {_causes(err)}"
        ) from None
