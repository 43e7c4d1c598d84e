"""Validation error of one trained net or of an ensemble, in any layout the trainer runs in.

The paper reports top-1/top-5 error from the centre crop, from the ten patches
(softmax averaged over the patches), and for ensembles of 5 and 7 nets whose
predictions are averaged. Here an ensemble is a list of checkpoint folders; every
net's softmax (already averaged over its patches) is averaged over the nets, and
the error is counted on that average.

In one process each net holds both towers. Under torchrun each process holds its
tower of every net, the tower pair sees the same batches (distributed.feed), and
replicas split the validation set and sum their counts, as the trainer evaluates.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from data.augment import Augmenter
from data.sources import open_datasets
from distributed import checkpoint
from distributed.config import Config, ConfigError
from distributed.feed import validation_batches
from distributed.layout import Layout
from distributed.metrics import ten_patch_probabilities, topk_wrong
from model.alexnet import AlexNet, Exchange


@dataclass(frozen=True)
class ErrorRates:
    """Top-1 and top-5 error of one way of testing, over `images` validation images."""

    top1: float
    top5: float
    images: int


def checkpoint_paths(cfg: Config, given: Sequence[str]) -> list[Path]:
    """The folders named on the command line, or the newest checkpoint in checkpoint.dir."""
    if not given:
        newest = checkpoint.latest(cfg.checkpoint.dir)
        if newest is None:
            raise ConfigError(f"no checkpoint in checkpoint.dir={cfg.checkpoint.dir}")
        return [newest]
    paths = [Path(p) for p in given]
    for path in paths:
        if not (path / ".metadata").is_file():
            raise ConfigError(f"{path} is not a complete checkpoint folder (no .metadata)")
    return paths


def load_network(cfg: Config, path: str | Path, device: torch.device,
                 towers: Sequence[int] | None = None, exchange: Exchange | None = None) -> AlexNet:
    """The checkpoint at `path` in eval mode on `device`: both towers, or `towers` joined by `exchange`."""
    net = AlexNet(cfg.model, towers, exchange)
    checkpoint.load_model_weights(net, path)
    return net.to(device).eval()


@torch.no_grad()
def centre_probabilities(nets: Sequence[AlexNet], augment: Augmenter, images: torch.Tensor) -> torch.Tensor:
    """[N, classes]: each net's softmax of the centre crops of uint8 `images`, averaged over the nets."""
    inputs = augment.centre(images)
    return torch.stack([net(inputs).float().softmax(dim=1) for net in nets]).mean(0)


@torch.no_grad()
def ten_patch_ensemble(nets: Sequence[AlexNet], augment: Augmenter, images: torch.Tensor) -> torch.Tensor:
    """[N, classes]: each net's softmax averaged over the ten patches, then over the nets."""
    patches = augment.ten_patches(images)
    return torch.stack([ten_patch_probabilities(net, patches) for net in nets]).mean(0)


def evaluate(cfg: Config, paths: Sequence[str | Path], run: Layout) -> dict[str, ErrorRates]:
    """{"centre": ..., "ten_patches": ...}: the ensemble of `paths` over the whole validation set,
    in the layout `run` (every process of it calls this; all get the same rates)."""
    plan, device = run.plan, run.plan.device
    data = open_datasets(cfg.data, cfg.train.seed)
    augment = Augmenter(data.stats, cfg.model.input_size, cfg.data.mean, cfg.data.flip, cfg.data.pca_std, device)
    exchange = run.exchange()
    nets = [load_network(cfg, p, device, plan.tower_indices(cfg.model.towers), exchange) for p in paths]
    batches = validation_batches(data.val, cfg, run)
    totals = torch.zeros(5, device=device)  # wrong top-1/top-5 of the centre crop, of ten patches; images
    for images, labels in batches:
        totals[:2] += topk_wrong(centre_probabilities(nets, augment, images), labels)
        totals[2:4] += topk_wrong(ten_patch_ensemble(nets, augment, images), labels)
        totals[4] += len(labels)
    if run.replica_group is not None:
        torch.distributed.all_reduce(totals, group=run.replica_group)
    c1, c5, t1, t5, count = totals.tolist()
    return {"centre": ErrorRates(c1 / count, c5 / count, int(count)),
            "ten_patches": ErrorRates(t1 / count, t5 / count, int(count))}


def report(paths: Sequence[Path], rates: dict[str, ErrorRates]) -> str:
    """The lines `--evaluate` prints."""
    nets = f"{len(paths)} nets" if len(paths) > 1 else "1 net"
    lines = [f"validation, {nets}: " + ", ".join(str(p) for p in paths)]
    for way, r in rates.items():
        lines.append(f"  {way:<12} top-1 error {r.top1:.4f}  top-5 error {r.top5:.4f}  ({r.images} images)")
    return "\n".join(lines)
