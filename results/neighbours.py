"""The training images nearest to a query in FC7 space, as in the paper's Figure 4 (right).

The paper compares the 4096-d activations of the last hidden layer by Euclidean
distance. The training set is streamed in batches and only the best `k` per query
are kept, so memory does not grow with the training set (ImageNet's FC7 would be 20 GB).
"""

from dataclasses import dataclass

import torch

from data.augment import Augmenter
from data.imageset import ImageSet
from data.loader import eval_batches
from model.alexnet import AlexNet


@dataclass(frozen=True)
class Neighbours:
    """For each query, the training-set indices of its k nearest images, nearest first, and their distances."""

    indices: torch.Tensor
    """int64 [queries, k]"""
    distances: torch.Tensor
    """float [queries, k]"""


@torch.no_grad()
def fc7(net: AlexNet, augment: Augmenter, images: torch.Tensor) -> torch.Tensor:
    """float [N, 4096] FC7 activations of the centre crops of uint8 `images` (no dropout)."""
    net.eval()
    return net.features(augment.centre(images), "fc7").float()


@torch.no_grad()
def nearest(
    net: AlexNet, augment: Augmenter, queries: torch.Tensor, train: ImageSet, k: int, batch_size: int, workers: int = 0,
) -> Neighbours:
    """The k training images nearest to each of the uint8 `queries` by Euclidean distance of FC7."""
    device = queries.device
    query = fc7(net, augment, queries)
    best_d = torch.full((len(query), 0), float("inf"), device=device)
    best_i = torch.zeros((len(query), 0), dtype=torch.long, device=device)
    start = 0
    for images, _ in eval_batches(train, batch_size, 0, 1, workers, 2, False):
        # Exact differences, not the |a|^2+|b|^2-2ab shortcut, whose rounding can reorder near ties.
        d = torch.cdist(query, fc7(net, augment, images.to(device)), compute_mode="donot_use_mm_for_euclid_dist")
        candidates_d = torch.cat([best_d, d], dim=1)
        candidates_i = torch.cat([best_i, torch.arange(start, start + len(images), device=device).expand(len(query), -1)], dim=1)
        keep = candidates_d.topk(min(k, candidates_d.shape[1]), dim=1, largest=False)
        best_d, best_i = keep.values, candidates_i.gather(1, keep.indices)
        start += len(images)
    return Neighbours(best_i.cpu(), best_d.cpu())
