"""Which images each step sees: a seeded permutation per epoch, cut into batches and replica shards."""

import torch

from model.seeds import derive_seed


class EpochOrder:
    """Epoch e visits the training set in the permutation seeded by (seed, e).

    Step s of the epoch takes permutation entries [s*B, (s+1)*B); replica r of R
    takes its own contiguous B/R of those. Any step can be rebuilt from its
    number alone, which is what lets a resumed run restart at the exact sample.
    The last partial batch of an epoch is dropped, as in the reference trainers.
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if size < batch_size:
            raise ValueError(f"{size} training images are fewer than one batch of {batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.steps_per_epoch = size // batch_size
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            rng = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
            self._cached = (epoch, torch.randperm(self.size, generator=rng))
        return self._cached[1]

    def batch(self, epoch: int, step: int, replica: int = 0, replicas: int = 1) -> torch.Tensor:
        """Indices of this replica's share of step `step` of epoch `epoch`."""
        share = self.batch_size // replicas
        start = step * self.batch_size + replica * share
        return self.permutation(epoch)[start : start + share]
