"""The network against PAPER.md's layer table, init rules and export layout."""

import pytest
import torch
from torch import nn

from model.alexnet import AlexNet, Tower
from model.config import ModelConfig
from model.export import grouped_state_dict
from model.summary import layer_rows

# PAPER.md: parameters (weights + biases) per layer and the output of each conv/FC layer.
PAPER_PARAMS = {
    "conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936,
    "conv5": 442_624, "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000,
}
PAPER_OUTPUT = {
    "conv1": "55x55x96", "conv2": "27x27x256", "conv3": "13x13x384", "conv4": "13x13x384",
    "conv5": "13x13x256", "fc6": "4096", "fc7": "4096", "fc8": "1000",
}
PAPER_PER_TOWER = {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128, "fc6": 2048, "fc7": 2048}


@pytest.mark.parametrize("input_size", [227, 224])
def test_layer_table_matches_paper(input_size):
    rows = {r["layer"]: r for r in layer_rows(ModelConfig(input_size=input_size))}
    assert {k: r["params"] for k, r in rows.items()} == PAPER_PARAMS
    assert {k: r["output"] for k, r in rows.items()} == PAPER_OUTPUT
    assert {k: rows[k]["per_tower"] for k in PAPER_PER_TOWER} == PAPER_PER_TOWER
    assert sum(PAPER_PARAMS.values()) == 60_965_224


def test_whole_model_parameter_count_and_logits_shape():
    net = AlexNet(ModelConfig())
    assert sum(p.numel() for p in net.parameters()) == 60_965_224
    assert net(torch.zeros(2, 3, 227, 227)).shape == (2, 1000)


def test_one_tower_baseline_keeps_conv5_and_fc_whole():
    rows = {r["layer"]: r for r in layer_rows(ModelConfig(towers=1))}
    assert [rows[k]["kernels"] for k in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [48, 128, 192, 192, 256]
    assert rows["fc6"]["kernels"] == rows["fc7"]["kernels"] == 4096


def test_pooling_modes_keep_the_paper_sizes():
    for pooling in ("overlapping", "non_overlapping"):
        net = AlexNet(ModelConfig(pooling=pooling, num_classes=7))
        assert net(torch.zeros(1, 3, 227, 227)).shape == (1, 7)
    assert AlexNet(ModelConfig()).towers["0"].pool.kernel_size == 3
    assert AlexNet(ModelConfig(pooling="non_overlapping")).towers["0"].pool.kernel_size == 2


def test_paper_init_statistics():
    net = AlexNet(ModelConfig())
    net.init_paper(seed=3)
    for key, tower in net.towers.items():
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            layer = getattr(tower, name)
            w = layer.weight.detach()
            assert abs(w.mean().item()) < 0.01 * 5 / w.numel() ** 0.5
            assert w.std().item() == pytest.approx(0.01, rel=0.05 if w.numel() > 1e4 else 0.15)
            expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            if layer.bias is not None:
                assert torch.equal(layer.bias, torch.full_like(layer.bias, expected_bias))
        # FC8 is split by input: only tower 0 carries its bias.
        assert (tower.fc8.bias is not None) == (key == "0")


def test_bias_init_constant_is_configurable():
    net = AlexNet(ModelConfig(bias_init=0.1))
    net.init_paper(seed=0)
    assert torch.all(net.towers["1"].conv4.bias == 0.1)
    assert torch.all(net.towers["1"].conv3.bias == 0.0)


def test_init_is_per_tower_and_seeded():
    a, b = AlexNet(ModelConfig()), AlexNet(ModelConfig(), tower_indices=(1,))
    a.init_paper(seed=5)
    b.init_paper(seed=5)
    assert torch.equal(a.towers["1"].fc6.weight, b.towers["1"].fc6.weight)
    assert not torch.equal(a.towers["0"].conv1.weight, a.towers["1"].conv1.weight)


class _GroupedLRN(nn.Module):
    """torch's LRN applied to each half of the maps, as each GPU normalised its own."""

    def __init__(self) -> None:
        super().__init__()
        self.lrn = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)  # torch divides alpha by n

    def forward(self, x):
        return torch.cat([self.lrn(h) for h in x.chunk(2, dim=1)], dim=1)


def _plain_grouped_alexnet(num_classes: int) -> nn.Sequential:
    """An ordinary single-network grouped AlexNet as cuda-convnet2's two-GPU net draws it."""
    lrn = _GroupedLRN()
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), lrn, nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), lrn, nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


def test_grouped_export_reproduces_logits():
    torch.manual_seed(0)
    net = AlexNet(ModelConfig(num_classes=10)).eval()
    net.init_paper(seed=1)
    plain = _plain_grouped_alexnet(10).eval()
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    indices = [0, 4, 8, 10, 12, 16, 18, 20]
    exported = grouped_state_dict(net.state_dict())
    plain.load_state_dict({f"{i}.{p}": exported[f"{n}.{p}"] for n, i in zip(names, indices) for p in ("weight", "bias")})
    x = torch.randn(3, 3, 227, 227) * 50
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=1e-4, atol=1e-4)


def test_grouped_export_shapes():
    exported = grouped_state_dict(AlexNet(ModelConfig()).state_dict())
    assert exported["conv2.weight"].shape == (256, 48, 5, 5)
    assert exported["conv3.weight"].shape == (384, 256, 3, 3)
    assert exported["fc8.weight"].shape == (1000, 4096)
    assert exported["fc8.bias"].shape == (1000,)
    assert sum(t.numel() for t in exported.values()) == 60_965_224


def test_dropout_masks_drop_half_of_fc6_and_fc7_and_scale_the_rest_by_two():
    # PAPER.md: dropout p = 0.5 after FC6 and FC7; inverted here (kept units x2 in training).
    tower = Tower(ModelConfig(), 0).train()
    cpu = torch.device("cpu")
    for stage, layer in ((2, tower.fc6), (3, tower.fc7)):
        mask = tower.dropout_mask(stage, 64, torch.Generator().manual_seed(0), cpu)
        assert mask.shape == (64, 2048) == (64, layer.out_features)
        assert set(mask.unique().tolist()) == {0.0, 2.0}
        assert abs((mask == 0).float().mean().item() - 0.5) < 0.01  # 131,072 draws: 0.5 +- 0.0014 (1 sd)
    assert [tower.dropout_mask(k, 64, None, cpu) for k in (0, 1)] == [None, None]  # no dropout in the conv stages
    assert tower.eval().dropout_mask(3, 64, None, cpu) is None
    assert Tower(ModelConfig(dropout=0.0), 0).train().dropout_mask(3, 64, None, cpu) is None
