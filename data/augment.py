"""The paper's augmentation, in batch on the training device.

Training: the mean subtracted, PCA colour noise added, then a random crop and a
random horizontal reflection, gathered in one indexing op for the whole batch.
Evaluation: the centre crop, or the paper's ten patches (four corners, centre,
and their reflections). Random draws come from a CPU generator the caller seeds,
so both towers of a replica draw the same crops, flips and colour noise.
"""

from dataclasses import dataclass

import torch

from config.data import DataConfig
from data.stats import ImageStats


@dataclass
class Draws:
    """One step's random augmentation of a replica's N images: crop offsets (int64 [N]), reflections
    (bool [N]) and PCA alphas (float [N, 3], already times data.pca_std)."""

    tops: torch.Tensor
    lefts: torch.Tensor
    flips: torch.Tensor
    alphas: torch.Tensor


class Augmenter:
    """uint8 [N, 3, 256, 256] batches in, float [N, 3, crop, crop] network inputs out."""

    def __init__(self, mean_image: torch.Tensor, crop: int, device: torch.device, flip: bool = False,
                 pca_basis: torch.Tensor | None = None, pca_std: float = 0.0) -> None:
        """`mean_image` [3, 256, 256] is subtracted from every image; with `pca_std` > 0, colour noise along
        `pca_basis` (from_stats) is added; with neither `flip` nor noise, nothing is random (evaluation)."""
        self.crop, self.flip, self.pca_std = crop, flip, pca_std
        self.mean = mean_image.to(device)
        self.pca_basis = None if pca_basis is None else pca_basis.to(device)

    @staticmethod
    def from_stats(stats: ImageStats, crop: int, mean: str, flip: bool, pca_std: float, device: torch.device) -> "Augmenter":
        """The paper's augmentation from the training set's statistics, less the mean per position (`mean`
        "image") or per channel ("channel")."""
        per_position = stats.mean_image if mean == "image" else stats.channel_mean[:, None, None].expand_as(stats.mean_image)
        # rgb shift = P @ (alpha * lambda), P's columns the eigenvectors. The paper's formula
        # is not scale-free: lambda is a variance, so its result depends on the pixel units.
        # We read it in [0, 1] units (lambda/255^2, shift*255), which gives shifts of a few
        # grey levels; read in 0..255 units it would add hundreds of levels and drown the image.
        pca_basis = stats.eigenvectors * stats.eigenvalues / 255.0
        return Augmenter(per_position, crop, device, flip, pca_basis, pca_std)

    @staticmethod
    def from_config(stats: ImageStats, data: DataConfig, crop: int, device: torch.device) -> "Augmenter":
        """The augmentation `data` configures, to crops of `crop` (model.input_size)."""
        return Augmenter.from_stats(stats, crop, data.mean, data.flip, data.pca_std, device)

    def train(self, images: torch.Tensor, rng: torch.Generator, first: int = 0, total: int | None = None) -> torch.Tensor:
        """Random patches for images [first, first + N) of a batch of `total`: `draw`, then `apply`."""
        n, _, side, _ = images.shape
        return self.apply(images, self.draw(rng, n, side, first, total))

    def draw(self, rng: torch.Generator, n: int, side: int, first: int = 0, total: int | None = None) -> Draws:
        """The draws for images [first, first + n) of a batch of `total` images of `side` pixels, on the CPU.

        The draws are made for the whole batch and sliced, so an image gets the same crop,
        reflection and colour noise whether its batch is split over replicas or not.
        """
        total = n if total is None else total
        span = side - self.crop + 1
        share = slice(first, first + n)
        tops = torch.randint(span, (total,), generator=rng)[share]
        lefts = torch.randint(span, (total,), generator=rng)[share]
        flips = (torch.rand(total, generator=rng) < 0.5)[share] if self.flip else torch.zeros(n, dtype=torch.bool)
        alphas = (torch.randn(total, 3, generator=rng) * self.pca_std)[share]
        return Draws(tops, lefts, flips, alphas)

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """The patches `draws` describe (on the CPU, or already on the images' device)."""
        shifts = to_device(draws.alphas, images.device) @ self.pca_basis.T if self.pca_std > 0 else None
        return self.patches(images, draws.tops, draws.lefts, draws.flips, shifts)

    def centre(self, images: torch.Tensor) -> torch.Tensor:
        offset = (images.shape[-1] - self.crop) // 2
        return (images.float() - self.mean)[:, :, offset : offset + self.crop, offset : offset + self.crop]

    def ten_patches(self, images: torch.Tensor) -> torch.Tensor:
        """[10, N, 3, crop, crop]: corners (top-left, top-right, bottom-left, bottom-right), centre, then each reflected."""
        n, side = images.shape[0], images.shape[-1]
        far, mid = side - self.crop, (side - self.crop) // 2
        corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
        out = []
        for flip in (False, True):
            for top, left in corners:
                tops, lefts = torch.full((n,), top), torch.full((n,), left)
                out.append(self.patches(images, tops, lefts, torch.full((n,), flip), None))
        return torch.stack(out)

    def patches(
        self, images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor,
        shifts: torch.Tensor | None,
    ) -> torch.Tensor:
        """Crop each uint8 image at (top, left), less the mean there, plus its RGB shift, reflected where `flips`."""
        if images.device.type == "cpu":
            return self._patches_by_slicing(images, tops, lefts, flips, shifts)
        return self._patches_by_gather(images, tops, lefts, flips, shifts)

    def _patches_by_gather(self, images, tops, lefts, flips, shifts) -> torch.Tensor:
        x = images.float() - self.mean
        if shifts is not None:
            x = x + shifts[:, :, None, None]
        # On a GPU one gather for the whole batch beats a kernel launch per image.
        tops, lefts, flips = (to_device(t, x.device) for t in (tops, lefts, flips))
        steps = torch.arange(self.crop, device=x.device)
        rows = tops[:, None] + steps
        cols = lefts[:, None] + torch.where(flips[:, None], self.crop - 1 - steps, steps)
        batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
        picked = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()

    def _patches_by_slicing(self, images, tops, lefts, flips, shifts) -> torch.Tensor:
        # On a CPU, converting only the crop of each image is ~6x cheaper than converting
        # whole images and gathering; the arithmetic is the same, so is every value.
        c = self.crop
        out = torch.empty((images.shape[0], 3, c, c), dtype=torch.float32)
        for i, (top, left, flip) in enumerate(zip(tops.tolist(), lefts.tolist(), flips.tolist())):
            patch = images[i, :, top : top + c, left : left + c].float() - self.mean[:, top : top + c, left : left + c]
            if shifts is not None:
                patch += shifts[i][:, None, None]
            out[i] = patch.flip(-1) if flip else patch
        return out


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without blocking the host: a plain copy to a GPU waits for the
    copy to finish, which would stall the step's queue of work once per batch."""
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
