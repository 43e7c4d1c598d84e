"""The network of Krizhevsky et al. 2012 as the towers it was split into.

A `Tower` is what one GTX 580 held: half the kernels of every conv layer and half
the neurons of FC6 and FC7. `AlexNet` runs the towers it is given (both in one
process, or one per process) and meets the other tower only through its
`exchange`, at the four places the paper's GPUs talked: into conv3, FC6, FC7, FC8.
"""

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import nn

from model.config import ModelConfig
from model.lrn import LocalResponseNorm


class Exchange(Protocol):
    """How the towers' activations meet. `parts` holds this process's towers' tensors."""

    def gather(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """All towers' tensors concatenated along dim 1, in tower order."""

    def sum(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """The sum of all towers' tensors."""


class LocalExchange:
    """Both towers live in this process: the exchange is a concatenation."""

    def gather(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tuple(parts), dim=1)

    def sum(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(tuple(parts)).sum(0) if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class TowerWidths:
    """Kernels of conv1..conv5 and neurons of FC6/FC7 in one tower."""

    conv: tuple[int, int, int, int, int]
    fc: int

    @staticmethod
    def of(towers: int) -> "TowerWidths":
        if towers == 2:
            return TowerWidths(conv=(48, 128, 192, 192, 128), fc=2048)
        # The paper's one-GPU baseline halves the conv kernels but keeps conv5 and the
        # FC layers whole, so that both nets have about the same parameter count.
        return TowerWidths(conv=(48, 128, 192, 192, 256), fc=4096)


STAGES = 4
"""A forward pass is stage 0, exchange, stage 1, ..., stage 3, exchange. Stage 0 ends at
conv3's input, 1 at FC6's, 2 at FC7's, 3 at FC8's partial logits; the first three
exchanges are gathers, the last a sum. STAGE_LAYERS names each stage's layers."""

STAGE_LAYERS = (("conv1", "conv2"), ("conv3", "conv4", "conv5"), ("fc6",), ("fc7", "fc8"))

POOLED_SIDE = 6
"""Side of the pool5 maps for both input sizes and both pooling modes."""

BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
"""Layers whose biases start at `bias_init` (1 in the paper); the others start at 0."""


class Tower(nn.Module):
    """One tower's layers. FC8 is split by input: each tower multiplies its own FC7
    half and the partial logits are summed, so tower 0 alone holds FC8's bias."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.index = index
        widths = TowerWidths.of(cfg.towers)
        c1, c2, c3, c4, c5 = widths.conv
        towers = cfg.towers
        self.conv1 = nn.Conv2d(3, c1, 11, stride=4, padding=0 if cfg.input_size == 227 else 2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.conv3 = nn.Conv2d(c2 * towers, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        self.fc6 = nn.Linear(c5 * towers * POOLED_SIDE**2, widths.fc)
        self.fc7 = nn.Linear(widths.fc * towers, widths.fc)
        self.fc8 = nn.Linear(widths.fc, cfg.num_classes, bias=index == 0)
        self.act = nn.ReLU() if cfg.activation == "relu" else nn.Tanh()
        self.pool = nn.MaxPool2d(3, 2) if cfg.pooling == "overlapping" else nn.MaxPool2d(2, 2)
        if cfg.lrn == "none":
            self.lrn = nn.Identity()
        else:
            self.lrn = LocalResponseNorm(cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k, cfg.lrn)
        self.dropout_p = cfg.dropout

    def to_conv3(self, image: torch.Tensor) -> torch.Tensor:
        """Stage 0. conv1, conv2 (each ReLU, LRN, pool): this tower's half of conv3's input."""
        x = self.pool(self.lrn(self.act(self.conv1(image))))
        return self.pool(self.lrn(self.act(self.conv2(x))))

    def to_fc6(self, both_towers: torch.Tensor) -> torch.Tensor:
        """Stage 1. conv3 (both towers' maps), conv4, conv5, pool: this tower's half of FC6's input."""
        x = self.act(self.conv3(both_towers))
        x = self.act(self.conv4(x))
        return self.pool(self.act(self.conv5(x))).flatten(1)

    def to_fc7(self, both_towers: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Stage 2. FC6 on both towers' pool5 maps, ReLU, dropout: this tower's half of FC7's input."""
        return dropped(self.act(self.fc6(both_towers)), keep)

    def to_logits(self, both_towers: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Stage 3. FC7 on both towers' FC6 outputs, ReLU, dropout, then this tower's part of FC8's logits."""
        return self.fc8(dropped(self.act(self.fc7(both_towers)), keep))

    def stages(self) -> tuple:
        """The four stage functions, in order; stages 2 and 3 also take a dropout mask (or None)."""
        return (self.to_conv3, self.to_fc6, self.to_fc7, self.to_logits)

    def dropout_mask(self, images: int, rng: torch.Generator | None, device: torch.device) -> torch.Tensor | None:
        """The kept units of FC6 or FC7 for `images` images, scaled by 1/keep (inverted dropout); None in eval.

        Drawn outside the stage functions, from the tower's own generator, so a tower's masks
        do not depend on whether the other tower lives in the same process, and a compiled
        stage is a pure function of its inputs.
        """
        if not self.training or self.dropout_p == 0:
            return None
        keep = 1.0 - self.dropout_p
        # FC6 and FC7 are equally wide in a tower, so one shape serves both masks.
        return torch.empty(images, self.fc7.out_features, device=device).bernoulli_(keep, generator=rng).div_(keep)

    def init_paper(self, weight_std: float, bias_init: float, rng: torch.Generator) -> None:
        """Weights ~ N(0, weight_std^2); biases `bias_init` in BIAS_ONE_LAYERS, else 0."""
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            layer = getattr(self, name)
            nn.init.normal_(layer.weight, 0.0, weight_std, generator=rng)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias_init if name in BIAS_ONE_LAYERS else 0.0)


class AlexNet(nn.Module):
    """The towers this process holds, wired through `exchange`.

    With `tower_indices=(0, 1)` and a `LocalExchange` this is the whole network in
    one process, the reference the split run is tested against.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        tower_indices: Sequence[int] | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        indices = tuple(range(cfg.towers)) if tower_indices is None else tuple(tower_indices)
        self.towers = nn.ModuleDict({str(i): Tower(cfg, i) for i in indices})
        self.exchange = exchange or LocalExchange()
        self.dropout_rngs: dict[str, torch.Generator] = {}
        self.compiled: dict[str, tuple] = {}

    def init_paper(self, seed: int) -> None:
        """The paper's init, each tower from its own seed so every layout starts equal.

        Also seeds each tower's dropout generator from (seed, tower).
        """
        for key, tower in self.towers.items():
            device = tower.conv1.weight.device
            init_rng = torch.Generator(device).manual_seed(tower_seed(seed, int(key), "init"))
            with torch.no_grad():
                tower.init_paper(self.cfg.weight_std, self.cfg.bias_init, init_rng)
        self.seed_dropout(seed)

    def seed_dropout(self, seed: int) -> None:
        """Fresh dropout generators on the towers' devices, from (seed, tower)."""
        self.dropout_rngs = {
            key: torch.Generator(t.conv1.weight.device).manual_seed(tower_seed(seed, int(key), "dropout"))
            for key, t in self.towers.items()
        }

    def compile_stages(self, mode: str | None = None) -> None:
        """torch.compile each tower's stage functions for training, in torch.compile's `mode`. Each stage
        is its own function, so each compiles once per input shape; evaluation (other batch sizes, no
        dropout) stays eager rather than spending a recompilation on every shape it meets."""
        self.compiled = {
            key: tuple(torch.compile(f, dynamic=False, mode=mode) for f in t.stages()) for key, t in self.towers.items()
        }

    def stage(self, index: int, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage `index` of every tower this process holds, on the exchanged input `x`."""
        outputs = []
        for key, tower in self.towers.items():
            run = (self.compiled[key] if self.training and self.compiled else tower.stages())[index]
            if index < 2:
                outputs.append(run(x))
            else:
                outputs.append(run(x, tower.dropout_mask(x.shape[0], self.dropout_rngs.get(key), x.device)))
        return outputs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits: the stages joined by gathers, FC8's partial logits summed across towers."""
        x = image
        for index in range(STAGES - 1):
            x = self.exchange.gather(self.stage(index, x))
        return self.exchange.sum(self.stage(STAGES - 1, x))

    def fc7_features(self, image: torch.Tensor) -> torch.Tensor:
        """The 4096-d FC7 activations the paper compares in Figure 4 (call in eval mode)."""
        x = image
        for index in range(STAGES - 1):
            x = self.exchange.gather(self.stage(index, x))
        return self.exchange.gather([t.act(t.fc7(x)) for t in self.towers.values()])


def dropped(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """x with dropout's scaled mask applied, or x itself without one."""
    return x if keep is None else x * keep


def tower_seed(seed: int, tower: int, purpose: str) -> int:
    """A seed for one tower and one use, the same in every process layout."""
    offsets = {"init": 0, "dropout": 1}
    return (seed * 1_000_003 + tower * 101 + offsets[purpose]) % (2**63)
