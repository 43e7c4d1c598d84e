"""Evaluation (centre crop, ten patches, ensembles; one process or two) against direct computations.

One tiny training run (two steps of the real trainer on a few embedded images, the `trained`
fixture) is shared; everything else reads its checkpoint, as the commands do.
"""

import os

import pytest
import torch

from bench.workers import free_port, run_workers
from checkpoints import store
from checkpoints.trained import load_network
from config.loading import load_config
from distributed import layout
from distributed.main import main
from model.alexnet import AlexNet
from tests.conftest import ROOT
from training.evaluation import CENTRE, TEN_PATCHES, evaluate_checkpoints, log_probabilities

CROP = 227
SIDE = 256


def config(overrides):
    return load_config([ROOT / "config.yaml"], overrides)


def one_process(cfg):
    return layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s)


# -- evaluation ---------------------------------------------------------------------------


def direct_probabilities(nets, stats, images: torch.Tensor, patches: int) -> torch.Tensor:
    """The paper's test, one image at a time, its patches cropped and reflected by hand."""
    far, mid = SIDE - CROP, (SIDE - CROP) // 2
    corners = [(mid, mid)] if patches == 1 else [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    flips = (False,) if patches == 1 else (False, True)
    out = []
    for image in images:
        x = image.float() - stats.mean_image
        crops = [x[:, top : top + CROP, left : left + CROP] for top, left in corners]
        crops = torch.stack([c.flip(-1) if flip else c for flip in flips for c in crops])
        # softmax of every (net, patch), then the mean over both: the ensemble of ten-patch predictions
        out.append(torch.stack([net(crops).softmax(1) for net in nets]).mean((0, 1)))
    return torch.stack(out)


def errors(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    rank = (probs > probs.gather(1, labels[:, None])).sum(1)  # classes scored above the true one
    return (rank >= 1).float().mean().item(), (rank >= 5).float().mean().item()


@torch.no_grad()
def test_evaluate_ensemble_matches_direct_computation(trained, tmp_path):
    trainer, _, overrides = trained
    cfg = config(overrides)
    # A second, untrained net makes an ensemble whose average differs from either net's.
    other = AlexNet(cfg.model)
    other.init_paper(seed=7)
    second = store.save({"model": other.state_dict()}, tmp_path / "other", step=1, keep=1, model=cfg.model)
    paths = [store.latest(cfg.checkpoint.dir), second]
    rates = evaluate_checkpoints(cfg, paths, one_process(cfg))

    nets = [load_network(cfg, p, torch.device("cpu")) for p in paths]
    images, labels = trainer.data.val.load(torch.arange(len(trainer.data.val)))
    for way, patches in (("centre", 1), ("ten_patches", 10)):
        top1, top5 = errors(direct_probabilities(nets, trainer.data.stats, images, patches), labels)
        assert (rates[way].top1, rates[way].top5) == pytest.approx((top1, top5)), way
        assert rates[way].images == len(labels)


@torch.no_grad()
def test_ensemble_probabilities_per_image_against_direct_computation(trained):
    """Per image, on probabilities rather than error rates (which a 2-step net predicting one class
    for every image cannot tell apart): two nets whose predictions differ, and their ensemble,
    which must be neither of them."""
    trainer, _, overrides = trained
    cfg = config(overrides)
    other = AlexNet(cfg.model)
    other.init_paper(seed=7)
    nets = [load_network(cfg, store.latest(cfg.checkpoint.dir), torch.device("cpu")), other.eval()]
    images, _ = trainer.data.val.load(torch.arange(len(trainer.data.val)))
    for way, patches in ((CENTRE, 1), (TEN_PATCHES, 10)):
        got = log_probabilities(nets, trainer.augment, images, way).exp()
        torch.testing.assert_close(got, direct_probabilities(nets, trainer.data.stats, images, patches),
                                   rtol=1e-4, atol=1e-6, msg=way)
        for member in nets:
            alone = log_probabilities([member], trainer.augment, images, way).exp()
            assert (got - alone).abs().max() > 1e-3, f"{way}: the ensemble equals one member"


@torch.no_grad()
def test_evaluate_one_checkpoint_matches_trainer(trained):
    """`evaluate` on the run's checkpoint: the error rates and the loss of the trainer's own net, computed
    directly. The loss tells the trained net from its init, which the error rates of two steps cannot."""
    trainer, _, overrides = trained
    cfg = config(overrides)
    rates = evaluate_checkpoints(cfg, [store.latest(cfg.checkpoint.dir)], one_process(cfg))
    init = AlexNet(cfg.model)
    init.init_paper(cfg.train.seed)
    images, labels = trainer.data.val.load(torch.arange(len(trainer.data.val)))
    for way, patches in ((CENTRE, 1), (TEN_PATCHES, 10)):
        losses = {}
        for name, net in (("trained", trainer.model), ("init", init)):
            probs = direct_probabilities([net.eval()], trainer.data.stats, images, patches)
            losses[name] = -probs.gather(1, labels[:, None]).log().mean().item()
            if name == "trained":
                assert (rates[way].top1, rates[way].top5) == pytest.approx(errors(probs, labels)), way
        assert rates[way].loss == pytest.approx(losses["trained"], rel=1e-5), way
        assert abs(losses["init"] - losses["trained"]) > 1e-3 * losses["trained"], f"{way}: the test cannot tell"


def _evaluate_in_processes(
    rank: int, world: int, overrides: list[str], paths: list[str], out: str, command_port: int
) -> None:
    from distributed.main import main as run_main

    cfg = config(overrides)
    rates = evaluate_checkpoints(cfg, paths, layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s))
    torch.save({way: (r.top1, r.top5, r.images) for way, r in rates.items()}, f"{out}/rank{rank}.pt")
    layout.stop()
    # A second group on the first one's port can meet that group's closing store and gloo pairs
    # ("Connection reset by peer" on a loaded machine); the command gets its own port, as a
    # second torchrun launch would.
    os.environ["MASTER_PORT"] = str(command_port)
    assert run_main(["evaluate", *(w for p in paths for w in ("--checkpoint", p)), *overrides]) == 0  # the command, under the same launch


@pytest.mark.parametrize("split", ["towers", "replicas"])
def test_evaluate_in_two_processes_equals_one(trained, tmp_path, split):
    # Two processes hold one tower each (the exchange path) or one whole net each (replicas
    # sharing the validation set); both must count what one process counts, on every rank.
    _, _, overrides = trained
    # Five validation images: the replicas' shares are unequal (3 and 2).
    overrides = [*(o for o in overrides if not o.startswith("data.synthetic_val_images=")),
                 f"parallel.tower_parallel={split == 'towers'}", "data.synthetic_val_images=5"]
    cfg = config(overrides)
    other = AlexNet(cfg.model)
    other.init_paper(seed=7)
    paths = [str(store.latest(cfg.checkpoint.dir)),
             str(store.save({"model": other.state_dict()}, tmp_path / "other", step=1, keep=1, model=cfg.model))]
    expected = {way: (r.top1, r.top5, r.images) for way, r in evaluate_checkpoints(cfg, paths, one_process(cfg)).items()}
    run_workers(2, _evaluate_in_processes, overrides, paths, str(tmp_path), free_port(), init=False)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected, rank


def test_evaluate_command_prints_both_ways(trained, capsys):
    _, _, overrides = trained
    assert main(["evaluate", *overrides]) == 0
    out = capsys.readouterr().out
    assert "centre" in out and "ten_patches" in out and "top-5 error" in out
    assert main(["evaluate", "--checkpoint", "/no/such/checkpoint", *overrides]) == 2
