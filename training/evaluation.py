"""Validation error of one net or of an ensemble, from the centre crop or ten patches: the one evaluation loop,
in any layout. Each net's softmax (averaged over its patches) is averaged over the nets and the error counted on
that average (PAPER.md); under torchrun each process holds its tower of every net, the tower pair sees the same
batches, and replicas split the validation set and sum their counts.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from checkpoints.trained import load_network
from config.errors import UserError
from config.schema import Config
from data.augment import Augmenter
from data.imageset import ImageSet
from data.loader import eval_share
from distributed.feed import validation_batches
from distributed.layout import Layout
from distributed.reductions import sum_over
from model.alexnet import AlexNet
from model.lrn import LocalResponseNorm
from training.datasets import open_datasets
from training.error_counts import topk_wrong
from training.speed import SpeedSwitches

CENTRE, TEN_PATCHES = "centre", "ten_patches"
WAYS = (CENTRE, TEN_PATCHES)


@dataclass(frozen=True)
class ErrorRates:
    """Top-1 and top-5 error and mean loss of one way of testing, over `images` validation images, of which
    `unreadable` gave outputs that are not numbers (so the rates mean nothing)."""

    top1: float
    top5: float
    loss: float
    images: int
    unreadable: int = 0


def unreadable(log_probs: torch.Tensor) -> torch.Tensor:
    """bool [N]: the rows of log-probabilities that hold a NaN or +inf, from which no class can be read (finite
    weights whose activations overflow float32 give these: a net scaled by 1e30, say). -inf is a probability
    that underflowed, and stays readable."""
    return (log_probs.isnan() | log_probs.isposinf()).any(dim=1)


@torch.no_grad()
def log_probabilities(nets: Sequence[AlexNet], augment: Augmenter, images: torch.Tensor, way: str) -> torch.Tensor:
    """float [N, classes]: the log of the nets' softmax of uint8 `images` (each net's averaged over
    the ten patches first, for TEN_PATCHES), averaged over the nets. Averaged in log space
    (logsumexp), so a probability that underflows in float32 still gives a finite loss."""
    views = augment.ten_patches(images) if way == TEN_PATCHES else augment.centre(images)[None]
    per_view = torch.stack([torch.stack([net(v).float().log_softmax(dim=1) for v in views]) for net in nets])
    return per_view.flatten(0, 1).logsumexp(dim=0) - math.log(per_view.shape[0] * per_view.shape[1])


def evaluate(
    nets: Sequence[AlexNet], augment: Augmenter, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    replica_group: dist.ProcessGroup | None, autocast: Callable, ways: Sequence[str] = WAYS,
) -> dict[str, ErrorRates]:
    """{way: ErrorRates} of the ensemble `nets` over `batches` (this replica's share of the
    validation set), summed over replicas: every process of the layout calls this and all get the same."""
    for net in nets:
        net.eval()
    device = next(nets[0].parameters()).device
    totals = torch.zeros(len(ways), 5, device=device)  # wrong top-1, wrong top-5, loss sum, images, unreadable
    for batch, labels in batches:
        with autocast():
            for k, way in enumerate(ways):
                log_probs = log_probabilities(nets, augment, batch, way)
                totals[k, :2] += topk_wrong(log_probs, labels)
                totals[k, 2] += F.nll_loss(log_probs, labels, reduction="sum")
                totals[k, 3] += len(labels)
                totals[k, 4] += unreadable(log_probs).sum()
    sums = sum_over(totals, replica_group).tolist()
    return {way: ErrorRates(*(v / sums[k][3] for v in sums[k][:3]), int(sums[k][3]), int(sums[k][4]))
            for k, way in enumerate(ways)}


class Validator:
    """The trainer's validation: this replica's share of the validation set at the end of each epoch (the
    centre crop, which the plateau schedule reads) and at the run's end (with the ten patches)."""

    def __init__(self, val: ImageSet, augment: Augmenter, cfg: Config, layout: Layout, autocast: Callable,
                 steps_per_epoch: int) -> None:
        self.val, self.augment, self.cfg, self.layout, self.autocast = val, augment, cfg, layout, autocast
        self.steps_per_epoch = steps_per_epoch

    def should_validate(self, step: int) -> bool:
        """Whether `step` ends an epoch."""
        return step % self.steps_per_epoch == 0

    def __call__(self, net: AlexNet, ways: Sequence[str] = (CENTRE,)) -> dict[str, ErrorRates]:
        batches = validation_batches(self.val, self.cfg, self.layout)
        return evaluate([net], self.augment, batches, self.layout.replica_group, self.autocast, ways)


def report(sources: Sequence[object], rates: dict[str, ErrorRates]) -> str:
    """The lines `evaluate` prints."""
    nets = f"{len(sources)} nets" if len(sources) > 1 else "1 net"
    lines = [f"validation, {nets}: " + ", ".join(str(p) for p in sources)]
    for way, r in rates.items():
        lines.append(f"  {way:<12} top-1 error {r.top1:.4f}  top-5 error {r.top5:.4f}  ({r.images} images)")
    return "\n".join(lines)


def evaluate_checkpoints(cfg: Config, paths: Sequence[Path], layout: Layout) -> dict[str, ErrorRates]:
    """The ensemble of the checkpoints at `paths` (one: a single net) over the whole validation set, with a
    progress bar on rank 0 (its replica's share of the images)."""
    device, plan = layout.plan.device, layout.plan
    data = open_datasets(cfg.data, cfg.train.seed, cfg.parallel.timeout_s)
    augment = Augmenter.from_config(data.stats, cfg.data, cfg.model.input_size, device)
    nets = [load_network(cfg, p, device, layout) for p in paths]
    if device.type == "cpu":
        LocalResponseNorm.kernel_available()  # built now if it must be (said once), rather than under the bar
    share = len(eval_share(len(data.val), plan.replica, plan.replicas))
    with tqdm(total=share, desc="evaluating", unit="img", disable=not (plan.logs and cfg.log.progress)) as bar:
        batches = _counted(validation_batches(data.val, cfg, layout), bar)
        rates = evaluate(nets, augment, batches, layout.replica_group,
                         lambda: SpeedSwitches.resolve(cfg.train, device).autocast(device))
    worst = max(rates.values(), key=lambda r: r.unreadable)
    if worst.unreadable:  # every process has the same sums: all refuse alike
        raise UserError(f"{', '.join(map(str, paths))}: the outputs for {worst.unreadable} of {worst.images} validation "
                        "images are not numbers (NaN): finite weights whose activations overflow float32; no error "
                        "rate can be read from them: give another checkpoint")
    return rates


def _counted(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], bar: tqdm):
    for images, labels in batches:
        yield images, labels
        bar.update(len(labels))
