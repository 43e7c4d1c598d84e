"""The visiting order (data/order.py): every image once per epoch, a new order each epoch, replicas
sharing each step's batch without overlap."""

import torch

from data.order import EpochOrder


def test_every_image_once_per_epoch_in_a_new_order_each_epoch():
    order = EpochOrder(size=50, batch_size=8, seed=3)
    assert order.steps_per_epoch == 6  # the last partial batch (2 images) is dropped
    seen = []
    for epoch in range(3):
        visited = torch.cat([order.batch(epoch, step) for step in range(order.steps_per_epoch)])
        assert len(visited) == 48 and len(visited.unique()) == 48  # no image twice in an epoch
        seen.append(visited)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    # Over epochs every image is visited: the dropped two differ from epoch to epoch.
    assert len(torch.cat(seen).unique()) == 50
    # The same (seed, epoch, step) always gives the same batch: what resuming relies on.
    assert torch.equal(EpochOrder(50, 8, seed=3).batch(2, 4), order.batch(2, 4))
    assert not torch.equal(EpochOrder(50, 8, seed=4).batch(2, 4), order.batch(2, 4))


def test_replicas_split_each_step_without_overlap():
    order = EpochOrder(size=64, batch_size=8, seed=0)
    for step in range(order.steps_per_epoch):
        parts = [order.batch(1, step, replica, 4) for replica in range(4)]
        assert torch.equal(torch.cat(parts), order.batch(1, step))
