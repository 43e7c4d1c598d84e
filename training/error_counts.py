"""Training and validation error counts: how many images have their label outside the top k."""

import torch


def topk_wrong(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many of the images have their label outside the top k of `scores` (logits or
    log-probabilities), for each k (float tensor, no sync)."""
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([(~hits[:, : min(k, k_max)].any(1)).sum() for k in ks]).float()
