"""The training and validation error counts (training/error_counts.py topk_wrong) against each image's rank counted
directly: the number of classes scored above its label."""

import pytest
import torch

from training.error_counts import topk_wrong


@pytest.mark.parametrize("classes", [10, 5, 3])
def test_top_k_wrong_counts_the_labels_with_k_or_more_classes_above(classes):
    g = torch.Generator().manual_seed(classes)
    scores = torch.randn(500, classes, generator=g)  # continuous: no ties
    labels = torch.randint(classes, (500,), generator=g)
    above = (scores > scores.gather(1, labels[:, None])).sum(1)
    assert topk_wrong(scores, labels).tolist() == [(above >= 1).sum().item(), (above >= 5).sum().item()]
    assert 0 < (above >= 1).sum() < 500  # some right, some wrong: the count can tell
