"""The network of Krizhevsky et al. 2012 as the towers it was split into.

A `Tower` is what one GTX 580 held: half the kernels of every conv layer and half
the neurons of FC6 and FC7. `AlexNet` runs the towers it is given (both in one
process, or one per process) and meets the other tower only through its
`exchange`, at the four places the paper's GPUs talked: into conv3, FC6, FC7, FC8
(model/layers.py declares the stages between them).
"""

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from config.model import ModelConfig
from model.exchange import Exchange, LocalExchange
from model.grouped import GroupedTowers
from model.layers import (
    BIAS_ONE_LAYERS,
    FUSED,
    GATHER,
    LAYERS,
    STAGES,
    build_layer,
    companion_steps,
    companions,
    fan_ins,
    split_by_input,
    widths,
)
from model.seeds import derive_seed

Masks = dict[str, list[torch.Tensor | None]]
"""Each tower's dropout masks (by tower key), one entry per stage: None where a stage has none."""


class Tower(nn.Module):
    """One tower's layers (conv1..fc8, named as in the paper) and the stages that run them."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.index = index
        width, fan_in = widths(cfg), fan_ins(cfg)
        for stage in STAGES:
            for layer in stage.layers:
                bias = index == 0 or not split_by_input(layer.name)
                self.add_module(layer.name, build_layer(cfg, layer, fan_in[layer.name], width[layer.name], bias=bias))
        modules = companions(cfg)
        for name, module in modules.items():
            self.add_module(name, module)
        self.steps = {layer.name: companion_steps(layer.after, FUSED in modules) for stage in STAGES for layer in stage.layers}
        self.dropout_p = cfg.dropout

    def run_stage(self, index: int, x: torch.Tensor, keep: torch.Tensor | None = None, until: str | None = None) -> torch.Tensor:
        """Stage `index` on its input `x` (the gathered one after stage 0): each layer, then what follows it,
        with dropout's scaled mask `keep` (None: no dropout); `until` stops after that layer's companions."""
        for layer in STAGES[index].layers:
            x = getattr(self, layer.name)(x)
            for step in self.steps[layer.name]:
                x = (x if keep is None else x * keep) if step == "dropout" else getattr(self, step)(x)
            if layer.name == until:
                break
        return x

    def stages(self) -> tuple[Callable, ...]:
        """One function per stage, (x, keep) -> output: what torch.compile compiles, one graph each."""
        return tuple(partial(self.run_stage, k) for k in range(len(STAGES)))

    def dropout_mask(
        self, stage: int, images: int, rng: torch.Generator | None, device: torch.device, out: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The kept units of the stage's dropout layer for `images` images, scaled by 1/keep (inverted
        dropout); None in eval, without dropout, or for a stage with none. Drawn into `out` when given
        (a static buffer a CUDA graph reads: the same draws as into a fresh tensor).

        Drawn outside the stage functions, from the tower's own generator, so a tower's masks
        do not depend on whether the other tower lives in the same process, and a compiled
        stage is a pure function of its inputs.
        """
        name = STAGES[stage].dropout_layer
        if not self.training or self.dropout_p == 0 or name is None:
            return None
        keep = 1.0 - self.dropout_p
        width = getattr(self, name).out_features
        if out is None:
            out = torch.empty(images, width, device=device)
        return out.bernoulli_(keep, generator=rng).div_(keep)

    def init_paper(self, weight_std: float, bias_init: float, rng: torch.Generator) -> None:
        """Weights ~ N(0, weight_std^2); biases `bias_init` in BIAS_ONE_LAYERS, else 0."""
        for name in LAYERS:
            layer = getattr(self, name)
            nn.init.normal_(layer.weight, 0.0, weight_std, generator=rng)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias_init if name in BIAS_ONE_LAYERS else 0.0)


class AlexNet(nn.Module):
    """The towers this process holds, wired through `exchange`.

    With `tower_indices=(0, 1)` and a `LocalExchange` this is the whole network in
    one process, the reference the split run is tested against.
    """

    def __init__(self, cfg: ModelConfig, tower_indices: Sequence[int] | None = None, exchange: Exchange | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        indices = tuple(range(cfg.towers)) if tower_indices is None else tuple(tower_indices)
        self.towers = nn.ModuleDict({str(i): Tower(cfg, i) for i in indices})
        self.exchange = exchange or LocalExchange()
        self.dropout_rngs: dict[str, torch.Generator] = {}
        self.compiled: dict[str, tuple] = {}
        self.grouped: GroupedTowers | None = None

    def init_paper(self, seed: int) -> None:
        """The paper's init, each tower from its own seed so every layout starts equal.

        Also seeds each tower's dropout generator from (seed, tower).
        """
        for key, tower in self.towers.items():
            init_rng = torch.Generator(tower.conv1.weight.device).manual_seed(derive_seed(seed, "init", int(key)))
            with torch.no_grad():
                tower.init_paper(self.cfg.weight_std, self.cfg.bias_init, init_rng)
        self.seed_dropout(seed)

    def seed_dropout(self, seed: int) -> None:
        """Fresh dropout generators on the towers' devices, from (seed, tower)."""
        self.dropout_rngs = {
            key: torch.Generator(t.conv1.weight.device).manual_seed(derive_seed(seed, "dropout", int(key)))
            for key, t in self.towers.items()
        }

    def group_towers(self) -> None:
        """Compute every tower as one network per layer from here on (model/grouped.py): the same function
        and parameters, fewer and larger kernels. Needs every tower in this process; call before compile_stages."""
        if not self.exchange.in_process or len(self.towers) != self.cfg.towers:
            raise ValueError("grouping the towers needs every tower in this process")
        self.grouped = GroupedTowers(list(self.towers.values()))

    def compile_stages(self, mode: str | None = None) -> None:
        """torch.compile each tower's stage functions (or the grouped ones) for training, in torch.compile's
        `mode`. Each stage is its own function, so each compiles once per input shape; evaluation (other
        batch sizes, no dropout) stays eager rather than spending a recompilation on every shape it meets."""
        def compiled(stages) -> tuple:
            return tuple(torch.compile(f, dynamic=False, mode=mode) for f in stages)

        if self.grouped is not None:
            self.compiled = {"grouped": compiled(self.grouped.stages())}
        else:
            self.compiled = {key: compiled(t.stages()) for key, t in self.towers.items()}

    def dropout_masks(self, images: int, device: torch.device, out: Masks | None = None) -> Masks:
        """Every tower's masks for one forward pass over `images` images, drawn from each tower's generator
        in the order a forward pass draws them; into `out`'s tensors when given (static buffers)."""
        return {
            key: [tower.dropout_mask(k, images, self.dropout_rngs.get(key), device, out[key][k] if out else None)
                  for k in range(len(STAGES))]
            for key, tower in self.towers.items()
        }

    def _mask(self, key: str, index: int, x: torch.Tensor, keeps: Masks | None) -> torch.Tensor | None:
        """Stage `index`'s mask of tower `key`: given in `keeps`, or drawn now."""
        if keeps is not None:
            return keeps[key][index]
        return self.towers[key].dropout_mask(index, x.shape[0], self.dropout_rngs.get(key), x.device)

    def stage(self, index: int, x: torch.Tensor, keeps: Masks | None = None) -> list[torch.Tensor]:
        """Stage `index` of every tower this process holds, on the exchanged input `x`."""
        outputs = []
        for key, tower in self.towers.items():
            run = (self.compiled[key] if self.training and key in self.compiled else tower.stages())[index]
            outputs.append(run(x, self._mask(key, index, x, keeps)))
        return outputs

    def _grouped_stage(self, index: int, x: torch.Tensor, keeps: Masks | None) -> torch.Tensor:
        """Stage `index` of the grouped towers: already the joined output."""
        masks = [self._mask(key, index, x, keeps) for key in self.towers]
        compiled = self.training and "grouped" in self.compiled
        run = (self.compiled["grouped"] if compiled else self.grouped.stages())[index]
        return run(x, None if masks[0] is None else masks)

    def forward(self, image: torch.Tensor, keeps: Masks | None = None) -> torch.Tensor:
        """Logits: each stage's outputs joined across towers as STAGES says (gathers, then FC8's sum).
        `keeps`: the dropout masks (`dropout_masks`), else drawn here."""
        x = image
        for index, stage in enumerate(STAGES):
            if self.grouped is None:
                x = self.exchange.join(stage.exchange, self.stage(index, x, keeps))
            else:
                x = self._grouped_stage(index, x, keeps)
        return x

    def features(self, image: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """Every tower's activations after `layer` and its companions, gathered: FC7's 4096 are
        what the paper compares in Figure 4 (call in eval mode: no dropout)."""
        x = image
        for index, stage in enumerate(STAGES):
            names = [each.name for each in stage.layers]
            if layer in names:
                return self.exchange.join(GATHER, [t.run_stage(index, x, until=layer) for t in self.towers.values()])
            x = self.exchange.join(stage.exchange, self.stage(index, x))
        raise ValueError(f"no layer {layer!r}; the layers are {LAYERS}")
