"""Where images come from and how they are augmented (PAPER.md, "Data")."""

from dataclasses import dataclass

from config.checks import at_least, from_to, one_of, paths

SYNTHETIC_CLASSES_MAX = 1000
"""ImageNet's count: the embedded gratings differ by orientation, a few degrees apart at 1000 classes."""
SYNTHETIC_IMAGES_MAX = 100_000
"""Images of each embedded split: its cache (data.synthetic_cache) then takes 19.7 GB; beyond, pack real data."""
WORKERS_MAX = 256
"""Loading processes per replica: each is a process of its own; more than the cores only contend."""
PREFETCH_MAX = 64
"""Batches each loading process holds ready: each is a batch of 196 KB images in memory."""


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and the paper's augmentation."""

    root: str = ""
    """Folder of packed shards (`python -m packs.prepare`); empty: the embedded synthetic data."""
    synthetic_classes: int = 10
    """Classes of the embedded data."""
    synthetic_train_images: int = 1280
    """Training images of the embedded data."""
    synthetic_val_images: int = 256
    """Validation images of the embedded data."""
    synthetic_cache: str = ".cache/synthetic"
    """Folder the embedded data is packed into on first use, one pack per seed and sizes, and read from
    after (packs/synthetic_cache.py); empty: every image is drawn again each time it is loaded."""
    mean: str = "image"
    """Mean subtracted from every pixel: image (per position, the reference nets) or channel."""
    pca_std: float = 0.1
    """Standard deviation of the PCA colour-noise factors alpha_i; 0 turns it off."""
    flip: bool = True
    """Random horizontal reflections of training patches."""
    workers: int = 1
    """Loading processes per replica (0 loads in the training process)."""
    prefetch: int = 4
    """Batches each loading process prepares ahead."""

    def __post_init__(self) -> None:
        one_of(self, mean=("image", "channel"))
        from_to(self, synthetic_classes=(2, SYNTHETIC_CLASSES_MAX), synthetic_train_images=(1, SYNTHETIC_IMAGES_MAX),
                synthetic_val_images=(1, SYNTHETIC_IMAGES_MAX), prefetch=(1, PREFETCH_MAX), workers=(0, WORKERS_MAX))
        at_least(self, pca_std=0)
        paths(self, "root", "synthetic_cache")
