"""A trained net, loaded from what a user names: a checkpoint folder, a weights file, or the newest
checkpoint in checkpoint.dir.

What is refused rather than used for a silently wrong result: a checkpoint folder without the
model.json that says which architecture its weights are (without it, the weights of another
architecture with the same shapes, another LRN or pooling say, would be evaluated as this one),
and weights that are not all finite (NaN or infinite weights give NaN probabilities, not an error).
"""

from pathlib import Path
from typing import Sequence

import torch

from checkpoints import store
from checkpoints.folder import KEY, configured
from checkpoints.weights import SUFFIX, check_weights, is_weights_file, load_weights
from config.errors import UserError
from config.schema import Config
from distributed.exchange import for_layout
from distributed.layout import Layout
from distributed.reductions import any_process
from model.alexnet import AlexNet


def checkpoint_paths(cfg: Config, given: Sequence[str | Path]) -> list[Path]:
    """The checkpoint folders and weights files named (a checkpoint.dir named stands for its newest complete
    checkpoint), or the newest complete checkpoint in checkpoint.dir.

    A weights file is checked against the model here (its header only), so a mismatch is refused in
    every process before any process group starts.
    """
    if not given:
        folder = configured(cfg)
        newest = store.latest(folder)
        if newest is None:
            raise UserError(f"no checkpoint in {KEY}={folder}")
        given = [newest]
    paths = [_newest_if_checkpoint_dir(Path(p)) for p in given]
    for path in paths:
        if is_weights_file(path):
            check_weights(path, cfg.model)
        elif store.is_checkpoint(path):
            store.check_model(path, cfg.model)  # its model.json, before any process group
        else:
            raise UserError(f"{path} is neither a complete checkpoint folder (one with {store.MARKER}), nor a "
                            f"checkpoint.dir holding one, nor a {SUFFIX} weights file (python -m results export "
                            "writes one)")
    return paths


def _newest_if_checkpoint_dir(path: Path) -> Path:
    """`path`, or the newest complete checkpoint in it when it is a checkpoint.dir rather than a checkpoint."""
    if is_weights_file(path) or store.is_checkpoint(path):
        return path
    return store.latest(path) or path


def load_network(cfg: Config, path: str | Path, device: torch.device, layout: Layout | None = None) -> AlexNet:
    """The trained net at `path` (a checkpoint folder or a weights file) in eval mode on `device`: this
    process's towers of `layout`, joined by its exchange, or (no layout) every tower in this one process."""
    towers = layout.plan.tower_indices(cfg.model.towers) if layout else None
    net = AlexNet(cfg.model, towers, for_layout(layout))
    if is_weights_file(path):
        load_weights(net, path, cfg.model)
    else:
        store.load({"model": net.state_dict()}, path, cfg.model)
    bad = next((name for name, p in net.named_parameters() if not bool(p.isfinite().all())), None)
    # Each process of a layout holds only its towers' weights: all learn of a bad one, so none waits for a peer.
    if any_process(bad is not None, layout.plan.device) if layout else bad is not None:
        raise UserError(f"{path}: holds weights that are not finite (NaN or infinite{', in ' + bad if bad else ''}); "
                        "they would give NaN probabilities: give another checkpoint")
    return net.to(device).eval()
