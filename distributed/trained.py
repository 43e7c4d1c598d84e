"""A trained net, loaded from what a user names: a checkpoint folder, or the newest in checkpoint.dir."""

from pathlib import Path
from typing import Sequence

import torch

from distributed import checkpoint
from distributed.config import Config
from distributed.errors import UserError
from distributed.exchange import for_layout
from distributed.layout import Layout
from model.alexnet import AlexNet


def checkpoint_paths(cfg: Config, given: Sequence[str | Path]) -> list[Path]:
    """The checkpoint folders named, or the newest complete one in checkpoint.dir."""
    if not given:
        newest = checkpoint.latest(cfg.checkpoint.dir)
        if newest is None:
            raise UserError(f"no checkpoint in checkpoint.dir={cfg.checkpoint.dir}")
        return [newest]
    paths = [Path(p) for p in given]
    for path in paths:
        if not (path / ".metadata").is_file():
            raise UserError(f"{path} is not a complete checkpoint folder (no .metadata)")
    return paths


def load_network(cfg: Config, path: str | Path, device: torch.device, layout: Layout | None = None) -> AlexNet:
    """The trained net at `path` in eval mode on `device`: this process's towers of `layout`,
    joined by its exchange, or (no layout) every tower in this one process."""
    towers = layout.plan.tower_indices(cfg.model.towers) if layout else None
    net = AlexNet(cfg.model, towers, for_layout(layout))
    checkpoint.load({"model": net.state_dict()}, path, cfg.model)
    return net.to(device).eval()
