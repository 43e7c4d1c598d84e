"""Error rates and the one logger: TensorBoard on rank 0, nothing on the others."""

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter


def topk_wrong(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many of the images have their label outside the top k, for each k (float tensor, no sync)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([(~hits[:, : min(k, k_max)].any(1)).sum() for k in ks]).float()


def ten_patch_probabilities(model: torch.nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """The paper's test-time prediction: the softmax of each of the ten patches
    ([10, N, 3, H, W], data.augment.Augmenter.ten_patches), averaged over the patches."""
    return torch.stack([model(p).float().softmax(dim=1) for p in patches]).mean(0)


class MetricLogger:
    """Slash-named scalars (`loss/train`, `error/val_top1`, ...) to TensorBoard, when enabled."""

    def __init__(self, log_dir: str | Path, enabled: bool) -> None:
        self.writer = SummaryWriter(str(log_dir)) if enabled else None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str) -> None:
        if self.writer:
            self.writer.add_text(tag, text)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        if self.writer:
            self.writer.add_image(tag, image, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
