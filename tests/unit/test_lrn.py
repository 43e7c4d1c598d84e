"""LRN against the paper's formula, written out directly, and the fast implementations (the C++ kernel and
its pure-torch twin, model/lrn/) against F.local_response_norm, outputs and input gradients."""

import pytest
import torch
import torch.nn.functional as F

from model.lrn import LocalResponseNorm
from tests.unit.lrn_comparison import FUSIONS, TOLERANCE, assert_scaled_close, inputs, value_and_grad
from tests.unit.reference_net import PAPER_LRN, paper_lrn


@pytest.mark.parametrize("implementation", ["reference", "kernel", "twin"])
@pytest.mark.parametrize("channels", [48, 7])
def test_paper_convention_matches_formula(channels, implementation):
    torch.manual_seed(0)
    a = torch.rand(2, channels, 5, 5, dtype=torch.float64) * 60  # large enough for the sum to matter
    got = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", implementation=implementation)(a)
    want = paper_lrn(a, k=2.0, n=5, alpha=1e-4, beta=0.75)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The tower's channel edges: maps 0 and N-1 see only 3 neighbours (themselves included).
    edge = a[:, 0] / (2.0 + 1e-4 * (a[:, :3] ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(got[:, 0], edge, rtol=1e-12, atol=1e-12)
    last = a[:, -1] / (2.0 + 1e-4 * (a[:, -3:] ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(got[:, -1], last, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implementation", ["reference", "kernel", "twin"])
def test_alpha_over_n_divides_alpha_by_window(implementation):
    torch.manual_seed(1)
    a = torch.rand(1, 16, 3, 3, dtype=torch.float64) * 80
    got = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "alpha_over_n", implementation=implementation)(a)
    torch.testing.assert_close(got, paper_lrn(a, 2.0, 5, 1e-4 / 5, 0.75), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, paper_lrn(a, 2.0, 5, 1e-4, 0.75))


def paper_formula_by_loop(a: torch.Tensor) -> torch.Tensor:
    """PAPER.md's LRN with its constants written out, one map at a time: b[i] = a[i] / (2 + 1e-4 * sum of a[j]^2
    for j from max(0, i - 2) to min(N - 1, i + 2))^0.75 (k = 2, n = 5, alpha = 1e-4, beta = 0.75)."""
    N = a.shape[1]
    out = torch.empty_like(a)
    for i in range(N):
        window = a[:, max(0, i - 2) : min(N - 1, i + 2) + 1]
        out[:, i] = a[:, i] / (2.0 + 1e-4 * (window * window).sum(1)) ** 0.75
    return out


def test_lrn_is_per_tower_in_the_model():
    """The default net's LRN, fused and one by one, is the paper's (k=2, n=5, alpha=1e-4, beta=0.75, by the formula
    computed map by map in float64) over each tower's 48 conv1 maps: a tower's edge maps do not see the other
    tower's."""
    from config.model import ModelConfig
    from model.alexnet import AlexNet

    net = AlexNet(ModelConfig()).double()
    net.init_paper(seed=0)
    x = torch.randn(1, 3, 227, 227, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 50
    with torch.no_grad():
        maps = {key: tower.conv1(x).relu() for key, tower in net.towers.items()}
        both = paper_formula_by_loop(torch.cat(list(maps.values()), dim=1))  # one window across 96 maps
        for key, tower in net.towers.items():
            assert maps[key].shape[1] == 48
            want = paper_formula_by_loop(maps[key])
            torch.testing.assert_close(paper_lrn(maps[key], **PAPER_LRN), want, rtol=1e-12, atol=0)
            torch.testing.assert_close(tower.lrn(maps[key]), want, rtol=1e-12, atol=0)
            fused = tower.run_stage(0, x, until="conv1")  # ReLU, LRN and pool in one pass
            torch.testing.assert_close(fused, F.max_pool2d(want, 3, 2), rtol=1e-12, atol=0)
        edge = both[:, 46:48] - paper_formula_by_loop(maps["0"])[:, 46:48]
        assert edge.abs().max() > 1e-6 * both.abs().max(), "the test cannot tell per-tower from across towers"
    assert isinstance(AlexNet(ModelConfig(lrn="none")).towers["0"].lrn, torch.nn.Identity)


# -- the fast implementations against F.local_response_norm --------------------------------------------------


def reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, pool) -> torch.Tensor:
    """torch's own ops, as the network ran them before the fast path (alpha: torch's, divided by size)."""
    y = F.local_response_norm(F.relu(x) if relu else x, size, alpha, beta, k)
    return F.max_pool2d(y, *pool) if pool else y


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [5, 4, 3, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("implementation", ["kernel", "twin"])
def test_fast_equals_reference(implementation, dtype, size, layout, fusion):
    relu, pool = FUSIONS[fusion]
    x = inputs(dtype, layout)
    module = LocalResponseNorm(size, 1e-4, 0.75, 2.0, "paper", relu=relu, pool=pool, implementation=implementation)
    got, got_grad = value_and_grad(module, x)
    want, want_grad = value_and_grad(lambda t: reference(t, size, 1e-4 * size, 0.75, 2.0, relu, pool), x)
    assert_scaled_close(got, want, TOLERANCE[dtype])
    assert_scaled_close(got_grad, want_grad, TOLERANCE[dtype])
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def test_auto_takes_the_kernel_on_cpu():
    module = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper")
    assert LocalResponseNorm.kernel_available(), "the C++ kernel did not build here (see the warning above)"
    assert module.chosen(torch.zeros(1, 4, 3, 3)) == "kernel"
    assert module.chosen(torch.zeros(4, 3, 3)) == "twin"  # not [N, C, H, W]


def test_ties_in_the_pool_go_where_torch_sends_them():
    """Windows of equal values (a ReLU's zeros, a constant map): the pooled gradient goes to the first of each
    window, as max_pool2d's, and the ReLU then drops it or not."""
    x = torch.zeros(1, 6, 9, 9, dtype=torch.float64)
    x[0, 1] = 3.0  # every window of map 1 ties
    x[0, 2, ::2, ::2] = -1.0  # negatives among zeros: ties after the ReLU
    x[0, 3, 4, 4] = float("nan")  # a NaN wins its windows
    for fused in (True, False):
        module = LocalResponseNorm(3, 1e-2, 0.75, 1.0, "paper", relu=fused, pool=(3, 2), implementation="kernel")
        got, got_grad = value_and_grad(module, x)
        want, want_grad = value_and_grad(lambda t: reference(t, 3, 3e-2, 0.75, 1.0, fused, (3, 2)), x)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_bfloat16_computes_in_float32_and_rounds_once(fusion, layout):
    """bf16 (autocast's conv outputs) is computed in float32: the output is the float32 result rounded, and the
    kernel and the twin agree; without the pool the input gradient is float32's, rounded."""
    relu, pool = FUSIONS[fusion]
    x = inputs(torch.bfloat16, layout)
    results = {}
    for implementation in ("kernel", "twin"):
        module = LocalResponseNorm(4, 1e-4, 0.75, 2.0, "paper", relu=relu, pool=pool, implementation=implementation)
        results[implementation] = value_and_grad(module, x)
        assert results[implementation][0].dtype == torch.bfloat16
    want, want_grad = value_and_grad(lambda t: reference(t, 4, 4e-4, 0.75, 2.0, relu, pool), x.float())
    one_bf16_step = 2.0**-7
    for got, got_grad in results.values():
        torch.testing.assert_close(got.float(), want, rtol=one_bf16_step, atol=0)
        if not pool:  # a pool's choice among values that bf16 rounds together can differ from float32's
            assert_scaled_close(got_grad.float(), want_grad, 2 * one_bf16_step)
    (kernel, kernel_grad), (twin, twin_grad) = results["kernel"], results["twin"]
    torch.testing.assert_close(kernel.float(), twin.float(), rtol=one_bf16_step, atol=0)
    assert_scaled_close(kernel_grad.float(), twin_grad.float(), one_bf16_step)
