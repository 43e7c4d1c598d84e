"""Checkpoints that load into any layout, written so a crash mid-write loses nothing.

Each checkpoint is a torch.distributed.checkpoint folder. Every process saves the
entries it holds, named by tower (`model/towers.1.fc6.weight`, the velocity as
`velocity/towers.1.fc6.weight`), so a two-process checkpoint holds exactly the
keys a one-process model asks for, and the other way round. The folder is written
as `step_XXXXXXXX.partial` and renamed when every process has finished: the
newest folder without the suffix is always complete. A write that fails (a full
disk, most often) removes its partial folder and leaves the older checkpoints be.
"""

import json
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.optim import Optimizer

from distributed.checkpoint_reader import CorruptCheckpoint, UnsafeCheckpoint, load_checkpoint
from distributed.errors import UserError
from model.config import ModelConfig

_NAME = re.compile(r"^step_(\d{8})$")
MODEL_FILE = "model.json"
"""The ModelConfig the weights were trained with, as JSON, in each checkpoint folder."""
PARTIAL = ".partial"


class CheckpointError(OSError):
    """A checkpoint cannot be written (no room on the disk); nothing already saved is lost."""


def _is_writer() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def training_state(model: nn.Module, optimizer: Optimizer, progress: dict[str, torch.Tensor]) -> dict:
    """The entries this process saves or loads; velocities are created (zero) if missing."""
    velocity = {}
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        if "momentum_buffer" not in state or state["momentum_buffer"] is None:
            state["momentum_buffer"] = torch.zeros_like(param)
        velocity[name] = state["momentum_buffer"]
    return {"model": model.state_dict(), "velocity": velocity, "progress": progress}


def check_space(directory: str | Path, checkpoint_bytes: int, keep: int) -> None:
    """Fail before training if the disk under `directory` cannot hold the checkpoints the run will keep.

    At the peak, `keep` complete checkpoints sit beside the one being written; those already
    there count as written.
    """
    root = Path(directory)
    to_write = max(1, keep + 1 - len(_complete(root)))
    existing = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < to_write * checkpoint_bytes:
        raise CheckpointError(
            f"checkpoint.dir={directory}: {free / 1e9:.2f} GB free, but {to_write} more checkpoint(s) of "
            f"{checkpoint_bytes / 1e9:.2f} GB each are needed (checkpoint.keep={keep}); free space or lower "
            "checkpoint.keep"
        )


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None."""
    done = _complete(Path(directory))
    return done[-1] if done else None


def _complete(root: Path) -> list[Path]:
    """Complete checkpoints (DCP writes .metadata last), oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.match(p.name) and (p / ".metadata").is_file()), key=lambda p: p.name)


def save(state: dict, directory: str | Path, step: int, keep: int) -> Path:
    """Write `state` (every process its own entries) as checkpoint `step`, then prune to `keep`."""
    root = Path(directory)
    final = root / f"step_{step:08d}"
    partial = root / (final.name + PARTIAL)
    if _is_writer():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    _barrier()
    try:
        dcp.save(state, checkpoint_id=partial)
    except (dcp.CheckpointException, OSError) as err:
        # DCP hands a write failure on any process to every process, so all of them land here.
        # (A lost peer raises a distributed error instead, reported as such by distributed.main.)
        if _is_writer():
            shutil.rmtree(partial, ignore_errors=True)
        free = shutil.disk_usage(root).free / 1e9
        raise CheckpointError(
            f"could not write checkpoint {final} ({free:.2f} GB free there); the older checkpoints are kept: "
            f"{_causes(err)}"
        ) from err
    _barrier()
    if _is_writer():
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in _complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _causes(err: BaseException) -> str:
    """Each failing process's own error, without the traceback DCP's exception prints."""
    if isinstance(err, dcp.CheckpointException):
        return "; ".join(f"rank {rank}: {exc!r}" for rank, (exc, _) in err.failures.items())
    return repr(err)


def load(state: dict, path: str | Path, model: ModelConfig | None = None) -> None:
    """Fill `state`'s tensors in place from the checkpoint at `path`, read by distributed/checkpoint_reader.py:
    a folder someone else made is hostile until proven otherwise, and DCP's own reader unpickles it.
    With `model`, a checkpoint that recorded another architecture is refused, naming each difference."""
    recorded = Path(path) / MODEL_FILE
    if model is not None and recorded.is_file():
        differences = model.differences(json.loads(recorded.read_text()))
        if differences:
            raise UserError(f"checkpoint {path} was trained with another model config: " + "; ".join(differences))
    try:
        load_checkpoint(state, path)
    except (UnsafeCheckpoint, CorruptCheckpoint) as err:
        raise UserError(str(err)) from None
    except dcp.CheckpointException as err:  # a BaseException: per-rank failures, e.g. shapes that differ
        raise UserError(
            f"checkpoint {path} does not match this model (was it saved with another model config?): {_causes(err)}"
        ) from None
