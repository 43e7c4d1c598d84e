"""Where images come from and how they are augmented (PAPER.md, "Data")."""

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and the paper's augmentation."""

    root: str = ""
    """Folder of packed shards (`python -m data.prepare`); empty: the embedded synthetic data."""
    synthetic_classes: int = 10
    """Classes of the embedded data."""
    synthetic_train_images: int = 1280
    """Training images of the embedded data."""
    synthetic_val_images: int = 256
    """Validation images of the embedded data."""
    synthetic_cache: str = ".cache/synthetic"
    """Folder the embedded data is packed into on first use, one pack per seed and sizes, and read from
    after (data/sources.py); empty: every image is drawn again each time it is loaded."""
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
        if self.mean not in ("image", "channel"):
            raise ValueError(f"mean={self.mean!r}: must be 'image' or 'channel'")
        for key, low in dict(synthetic_classes=2, synthetic_train_images=1, synthetic_val_images=1, prefetch=1, workers=0).items():
            if getattr(self, key) < low:
                raise ValueError(f"{key}={getattr(self, key)}: must be at least {low}")
        if self.pca_std < 0:
            raise ValueError(f"pca_std={self.pca_std}: must be >= 0")
