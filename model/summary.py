"""The layer table of PAPER.md, computed from the modules themselves."""

import torch

from config.model import ModelConfig
from model.alexnet import AlexNet
from model.layers import LAYERS, split_by_input


def layer_rows(cfg: ModelConfig) -> list[dict]:
    """Per layer: kernels in all towers and per tower, kernel shape, output shape, parameters."""
    net = AlexNet(cfg).eval()
    tower = net.towers["0"]
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(tower, name).register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape))
        for name in LAYERS
    ]
    with torch.no_grad():
        net(torch.zeros(1, 3, cfg.input_size, cfg.input_size))
    for hook in hooks:
        hook.remove()
    rows = []
    for name in LAYERS:
        layers = [getattr(t, name) for t in net.towers.values()]
        weight = layers[0].weight
        total = sum(p.numel() for layer in layers for p in layer.parameters())
        per_tower = weight.shape[0]
        kernels = per_tower if split_by_input(name) else per_tower * len(layers)
        side = shapes[name][-1] if len(shapes[name]) == 4 else None
        rows.append({
            "layer": name,
            "kernels": kernels,
            "per_tower": per_tower,
            "kernel": "x".join(map(str, weight.shape[2:])) + f"x{weight.shape[1]}" if weight.dim() == 4 else f"{weight.shape[1]} in",
            "output": f"{side}x{side}x{kernels}" if side else str(kernels),
            "params": total,
        })
    return rows


def layer_table(cfg: ModelConfig) -> str:
    """PAPER.md's table as text, with the total parameter count."""
    rows = layer_rows(cfg)
    header = f"{'layer':<6} {'kernels':>8} {'per tower':>9} {'kernel':>10} {'output':>12} {'parameters':>12}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['layer']:<6} {r['kernels']:>8} {r['per_tower']:>9} {r['kernel']:>10} {r['output']:>12} {r['params']:>12,}"
        )
    lines.append(f"{'total':<6} {'':>8} {'':>9} {'':>10} {'':>12} {sum(r['params'] for r in rows):>12,}")
    return "\n".join(lines)
