"""The network against PAPER.md's layer table, init rules and export layout."""

import pytest
import torch

from config.model import ModelConfig
from model.alexnet import AlexNet, Tower
from model.export import grouped_state_dict
from model.layers import GATHER, STAGES, SUM
from model.summary import layer_rows
from tests.unit.reference_net import by_layer, plain_grouped_alexnet

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


PAPER_STAGES = (
    ((("conv1", 11, 4, 0, ("act", "lrn", "pool")), ("conv2", 5, 1, 2, ("act", "lrn", "pool"))), GATHER),
    ((("conv3", 3, 1, 1, ("act",)), ("conv4", 3, 1, 1, ("act",)), ("conv5", 3, 1, 1, ("act", "pool", "flatten"))), GATHER),
    ((("fc6", 0, 1, 0, ("act", "dropout")),), GATHER),
    ((("fc7", 0, 1, 0, ("act", "dropout")), ("fc8", 0, 1, 0, ())), SUM),
)
"""PAPER.md's layer table as stages: (layer, kernel, stride, padding, what follows it, in order), and how the
towers meet after each (into conv3, FC6 and FC7 both towers' maps; FC8 split by input, its logits summed)."""


def test_the_stage_table_is_the_papers():
    got = tuple((tuple((la.name, la.kernel, la.stride, la.padding, la.after) for la in st.layers), st.exchange)
                for st in STAGES)
    assert got == PAPER_STAGES


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


def test_grouped_export_reproduces_logits():
    """float64, to 1e-10 of the outputs' scale: a companion out of the paper's order (conv2's pool before its
    LRN moves stage 0's outputs by 0.3% and the logits by under 1e-4 of their scale) cannot hide under
    float32's rounding."""
    net = AlexNet(ModelConfig(num_classes=10)).double().eval()
    net.init_paper(seed=1)
    plain = plain_grouped_alexnet(10).double().eval()
    exported = grouped_state_dict(net.state_dict())
    with torch.no_grad():
        for key, param in by_layer(plain).items():
            param.copy_(exported[key])
        x = torch.randn(3, 3, 227, 227, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 50
        # Stage 0 first, tower by tower: conv1 and conv2, each with its ReLU, LRN and pool.
        want = plain[:8](x)
        torch.testing.assert_close(torch.cat(net.stage(0, x), dim=1), want, rtol=0, atol=1e-10 * want.abs().max().item())
        want = plain(x)
        torch.testing.assert_close(net(x), want, rtol=0, atol=1e-10 * want.abs().max().item())


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
