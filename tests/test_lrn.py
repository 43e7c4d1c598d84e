"""LRN against the paper's formula, written out directly."""

import pytest
import torch

from model.lrn import LocalResponseNorm


def paper_lrn(a: torch.Tensor, k: float, n: int, alpha: float, beta: float) -> torch.Tensor:
    """b[i] = a[i] / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2)^beta, looped."""
    N = a.shape[1]
    out = torch.empty_like(a)
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo : hi + 1] ** 2).sum(1)) ** beta
    return out


@pytest.mark.parametrize("channels", [48, 7])
def test_paper_convention_matches_formula(channels):
    torch.manual_seed(0)
    a = torch.rand(2, channels, 5, 5, dtype=torch.float64) * 60  # large enough for the sum to matter
    got = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper")(a)
    want = paper_lrn(a, k=2.0, n=5, alpha=1e-4, beta=0.75)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The tower's channel edges: maps 0 and N-1 see only 3 neighbours (themselves included).
    edge = a[:, 0] / (2.0 + 1e-4 * (a[:, :3] ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(got[:, 0], edge, rtol=1e-12, atol=1e-12)
    last = a[:, -1] / (2.0 + 1e-4 * (a[:, -3:] ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(got[:, -1], last, rtol=1e-12, atol=1e-12)


def test_alpha_over_n_divides_alpha_by_window():
    torch.manual_seed(1)
    a = torch.rand(1, 16, 3, 3, dtype=torch.float64) * 80
    got = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "alpha_over_n")(a)
    torch.testing.assert_close(got, paper_lrn(a, 2.0, 5, 1e-4 / 5, 0.75), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, paper_lrn(a, 2.0, 5, 1e-4, 0.75))


def test_lrn_is_per_tower_in_the_model():
    from model.alexnet import AlexNet
    from model.config import ModelConfig

    net = AlexNet(ModelConfig())
    assert net.towers["0"].conv1.out_channels == 48  # LRN sums over these 48 maps only
    assert isinstance(net.towers["0"].lrn, LocalResponseNorm)
    assert isinstance(AlexNet(ModelConfig(lrn="none")).towers["0"].lrn, torch.nn.Identity)
