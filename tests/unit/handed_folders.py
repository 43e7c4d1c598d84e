"""Folders handed to a run (a checkpoint.dir or log.dir to resume into): what they hold, to compare before and
after, and claiming them as the program does."""

from pathlib import Path

from checkpoints.folder import CheckpointFolder
from config.loading import load_config
from distributed import layout
from tests.conftest import ROOT


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path there, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def claimed(tmp_path, **folders) -> None:
    """Claim the folders named (checkpoint_dir=..., log_dir=...) and let them go, as a run starting there does."""
    cfg = load_config([ROOT / "config.yaml"], ["train.device=cpu", *(f"{k.replace('_', '.')}={v}" for k, v in folders.items())])
    with CheckpointFolder(cfg, layout.plan_from_env(cfg, {})).claim():
        pass
