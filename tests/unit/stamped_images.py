"""Images that say which they are: an ImageSet whose image i holds the bytes of i, for the tests of the loader's
ring and of the move to a device, which check that each batch is the order's and no slot is rewritten early."""

import random
import time

import torch

from data.imageset import IMAGE_SHAPE


class Stamped:
    """An ImageSet whose image i is filled with the bytes of i; loading takes a random few milliseconds,
    so that loading processes finish out of order and run as far ahead as the DataLoader lets them."""

    compressed = False
    classes = ["a"]

    def __init__(self, size: int, jitter_s: float = 0.004) -> None:
        self.size, self.jitter_s = size, jitter_s

    def __len__(self) -> int:
        return self.size

    def load_into(self, indices: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        time.sleep(random.uniform(0, self.jitter_s))
        for row, i in zip(images, indices.tolist()):
            row.view(-1)[:8] = torch.tensor([i], dtype=torch.int64).view(torch.uint8)
        return indices.clone()

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.empty((len(indices), *IMAGE_SHAPE), dtype=torch.uint8)
        return images, self.load_into(indices, images)


def stamps(images: torch.Tensor) -> list[int]:
    return [int(row.view(-1)[:8].view(torch.int64)) for row in images]


def chunks(n: int, size: int) -> list[torch.Tensor]:
    return list(torch.arange(n * size).split(size))
