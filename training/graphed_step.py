"""The one-pass training step (both towers in one process, one micro-batch, no replicas) over static buffers,
captured once as a CUDA graph and replayed every step (`train.step_graph`). What runs inside the graph and what
the host does between replays: README.md, "train.step_graph=on". Uncaptured (`capture=False`, on a CPU) the
same code runs as it is, and equals the eager step bitwise (tests/test_graphed_step.py).
"""

import torch
from torch.optim import Optimizer

from data.augment import Augmenter, Draws
from distributed.pipeline import PipelinedStep
from model.alexnet import AlexNet
from training.device_rate import hold_rate_on_device
from training.error_counts import topk_wrong
from training.speed import SpeedSwitches

WARMUP_STEPS = 3
"""Steps run uncaptured before the capture, on a side stream (torch.cuda.graphs' whole-network example warms
up 3): cuDNN's search, compilation, the first allocations; real training steps, not thrown away."""


class StaticStep:
    """One process's training step over static buffers; on a GPU, replayed as one CUDA graph."""

    def __init__(self, model: AlexNet, pipeline: PipelinedStep, optimizer: Optimizer, augment: Augmenter,
                 speed: SpeedSwitches, device: torch.device, capture: bool = True) -> None:
        self.model, self.pipeline, self.optimizer, self.augment = model, pipeline, optimizer, augment
        self.speed, self.device, self.capture = speed, device, capture
        hold_rate_on_device(optimizer, device)
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.draws: torch.Tensor | None = None
        """alphas [N, 3], then tops, lefts and flips [N] each, as float32 (exact for offsets and flags):
        one buffer, so one transfer a step."""
        self.keeps = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.side = torch.cuda.Stream(device) if capture else None
        self.warmed = 0

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, rng: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on this batch, its augmentation drawn from `rng` and its dropout masks from the towers'
        generators (seeded for the step by the caller); returns (summed loss, wrong top-1/top-5) without syncing."""
        self._load(images, labels, rng)
        if not self.capture:
            return self._compute()
        if self.graph is None and self.warmed < WARMUP_STEPS:
            self.warmed += 1
            return self._on_side_stream()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.outputs[0].clone(), self.outputs[1].clone()  # the graph's outputs are overwritten next step

    def _load(self, images: torch.Tensor, labels: torch.Tensor, rng: torch.Generator) -> None:
        """Everything that changes per step, into the static buffers (allocated at the first step)."""
        n, side = len(labels), images.shape[-1]
        if self.images is None:
            self.images, self.labels = torch.empty_like(images), torch.empty_like(labels)
            self.draws = torch.empty(6 * n, device=self.device)
        elif images.shape != self.images.shape:
            raise ValueError(f"a static step takes batches of {tuple(self.images.shape)}, not {tuple(images.shape)}")
        self.images.copy_(images)
        self.labels.copy_(labels)
        d = self.augment.draw(rng, n, side)
        host = torch.cat([d.alphas.reshape(-1), d.tops.float(), d.lefts.float(), d.flips.float()])
        # From pinned memory the copy does not block the host; the pinned block is not reused before it lands.
        self.draws.copy_(host.pin_memory() if self.device.type == "cuda" else host, non_blocking=True)
        self.keeps = self.model.dropout_masks(n, self.device, out=self.keeps)

    def _compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step from the static buffers: what the graph captures."""
        n = len(self.labels)
        alphas, tops, lefts, flips = self.draws.split([3 * n, n, n, n])
        draws = Draws(tops.long(), lefts.long(), flips.bool(), alphas.view(n, 3))
        inputs = self.augment.apply(self.images, draws).contiguous(memory_format=self.speed.memory_format)
        self.optimizer.zero_grad(set_to_none=False)  # inside the graph: the static tensors the update reads
        loss_sum, logits = self.pipeline.whole_batch(
            inputs, self.labels, lambda: self.speed.autocast(self.device, cache=False), self.keeps)
        self.optimizer.step()
        return loss_sum, topk_wrong(logits, self.labels)

    def _on_side_stream(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A warm-up step, on a side stream ordered after the loads and before whatever reads its results."""
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            outputs = self._compute()
        current.wait_stream(self.side)
        return outputs

    def _capture(self) -> None:
        """Record the step once (nothing runs while it is recorded: the loaded step runs at the first replay)."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._compute()
