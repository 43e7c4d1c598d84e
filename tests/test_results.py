"""The tools that use a trained net (evaluate, predict, figures, ONNX) against direct computations.

One tiny training run (two steps of the real trainer on a few embedded images) is
shared by the module; everything else reads its checkpoint, as the commands do.
"""

import os

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from distributed import checkpoint, layout
from distributed.config import load_config
from distributed.evaluate import centre_probabilities, evaluate, load_network, ten_patch_ensemble
from distributed.figures import PADDING, PER_ROW, TOWER_GAP, colourfulness, conv1_figure, conv1_kernels, log_conv1_kernels
from distributed.main import main
from distributed.metrics import MetricLogger
from distributed.neighbours import fc7, nearest
from distributed.trainer import Trainer
from model.alexnet import AlexNet
from model.config import ModelConfig
from tests.conftest import ROOT, free_port, run_workers
from tests.trainer_runs import SMALL, train_scalars

RUN = ["train.max_steps=2", "train.epochs=1", "data.synthetic_val_images=4"]
"""Two steps and four validation images: SMALL's values of these keys give way (an override may appear once)."""
CROP = 227
SIDE = 256


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(trainer, run dir, the command-line overrides that name its config) after a two-step run."""
    run_dir = tmp_path_factory.mktemp("run")
    replaced = {o.partition("=")[0] for o in RUN}
    overrides = [*(o for o in SMALL if o.partition("=")[0] not in replaced), *RUN,
                 f"log.dir={run_dir}", f"checkpoint.dir={run_dir}/ck"]
    cfg = config(overrides)
    trainer = Trainer(cfg, layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s))
    trainer.run()
    return trainer, run_dir, overrides


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
    second = checkpoint.save({"model": other.state_dict()}, tmp_path / "other", step=1, keep=1)
    paths = [checkpoint.latest(cfg.checkpoint.dir), second]
    rates = evaluate(cfg, paths, one_process(cfg))

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
    nets = [load_network(cfg, checkpoint.latest(cfg.checkpoint.dir), torch.device("cpu")), other.eval()]
    images, _ = trainer.data.val.load(torch.arange(len(trainer.data.val)))
    for ensemble, patches in ((centre_probabilities, 1), (ten_patch_ensemble, 10)):
        got = ensemble(nets, trainer.augment, images)
        torch.testing.assert_close(got, direct_probabilities(nets, trainer.data.stats, images, patches),
                                   rtol=1e-4, atol=1e-6, msg=ensemble.__name__)
        for member in nets:
            alone = ensemble([member], trainer.augment, images)
            assert (got - alone).abs().max() > 1e-3, f"{ensemble.__name__}: the ensemble equals one member"


def test_evaluate_one_checkpoint_matches_trainer(trained):
    trainer, _, overrides = trained
    cfg = config(overrides)
    rates = evaluate(cfg, [checkpoint.latest(cfg.checkpoint.dir)], one_process(cfg))
    for way, patches in (("centre", 1), ("ten_patches", 10)):
        expected = trainer.evaluate(patches=patches)
        assert (rates[way].top1, rates[way].top5) == pytest.approx((expected.top1, expected.top5)), way


def _evaluate_in_processes(
    rank: int, world: int, overrides: list[str], paths: list[str], out: str, command_port: int
) -> None:
    from distributed.main import main as run_main

    cfg = config(overrides)
    rates = evaluate(cfg, paths, layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s))
    torch.save({way: (r.top1, r.top5, r.images) for way, r in rates.items()}, f"{out}/rank{rank}.pt")
    layout.stop()
    # A second group on the first one's port can meet that group's closing store and gloo pairs
    # ("Connection reset by peer" on a loaded machine); the command gets its own port, as a
    # second torchrun launch would.
    os.environ["MASTER_PORT"] = str(command_port)
    assert run_main(["--evaluate", *paths, *overrides]) == 0  # the command, under the same launch


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
    paths = [str(checkpoint.latest(cfg.checkpoint.dir)),
             str(checkpoint.save({"model": other.state_dict()}, tmp_path / "other", step=1, keep=1))]
    expected = {way: (r.top1, r.top5, r.images) for way, r in evaluate(cfg, paths, one_process(cfg)).items()}
    run_workers(2, _evaluate_in_processes, overrides, paths, str(tmp_path), free_port(), init=False)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected, rank


def test_evaluate_command_prints_both_ways(trained, capsys):
    _, _, overrides = trained
    assert main(["--evaluate", *overrides]) == 0
    out = capsys.readouterr().out
    assert "centre" in out and "ten_patches" in out and "top-5 error" in out
    assert main(["--evaluate", "/no/such/checkpoint", *overrides]) == 2


# -- Figure 3 -----------------------------------------------------------------------------


def test_conv1_figure_has_48_kernels_per_tower_in_place():
    model = AlexNet(ModelConfig(num_classes=10))
    model.init_paper(0)
    kernels = conv1_kernels(model)
    assert sorted(kernels) == [0, 1] and all(k.shape == (48, 3, 11, 11) for k in kernels.values())
    figure = conv1_figure(kernels)
    cell = 11 + PADDING
    tower_height = 48 // PER_ROW * cell + PADDING
    assert figure.shape == (3, 2 * tower_height + TOWER_GAP, PER_ROW * cell + PADDING)
    for tower, weights in kernels.items():
        for k, w in enumerate(weights):
            row, col = divmod(k, PER_ROW)
            top = tower * (tower_height + TOWER_GAP) + PADDING + row * cell
            left = PADDING + col * cell
            expected = (w - w.min()) / (w.max() - w.min())
            torch.testing.assert_close(figure[:, top : top + 11, left : left + 11], expected)


def test_colourfulness_separates_grey_from_colour_kernels():
    grey = torch.randn(4, 1, 5, 5).expand(4, 3, 5, 5)
    assert colourfulness(grey) == pytest.approx(0.0, abs=1e-12)
    # Red-only +-1 checkerboard: std across RGB is sqrt(2)/3 everywhere, the whole kernel's std sqrt(1/3).
    red = torch.zeros(1, 3, 2, 2)
    red[0, 0] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert colourfulness(red) == pytest.approx((2**0.5 / 3) / (1 / 3) ** 0.5)


def test_conv1_kernels_logged_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = AlexNet(ModelConfig(num_classes=10))
    model.init_paper(0)
    logger = MetricLogger(tmp_path, enabled=True)
    colour = log_conv1_kernels(logger, conv1_kernels(model), step=3)
    logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["kernels/conv1_tower0", "kernels/conv1_tower1"]
    assert train_scalars(tmp_path, "kernels/colour_tower1") == [pytest.approx(colour[1])]


def _gather_kernels(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist

    model = AlexNet(ModelConfig(num_classes=10), tower_indices=(rank,))
    model.init_paper(0)
    kernels = conv1_kernels(model, dist.group.WORLD)
    if rank == 0:
        torch.save(kernels, out)


def test_conv1_kernels_gathered_from_two_processes(tmp_path):
    run_workers(2, _gather_kernels, str(tmp_path / "k.pt"))
    whole = AlexNet(ModelConfig(num_classes=10))
    whole.init_paper(0)
    gathered = torch.load(tmp_path / "k.pt")
    for tower, weights in conv1_kernels(whole).items():
        torch.testing.assert_close(gathered[tower], weights, rtol=0, atol=0)


# -- predict ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(trained, tmp_path_factory):
    """The paths of two validation images written at test time, one as a PNG, one as a JPEG."""
    trainer, _, _ = trained
    folder = tmp_path_factory.mktemp("images")
    images = trainer.data.val.load(torch.arange(2))[0]
    write_png(images[0], str(folder / "first.png"))
    write_jpeg(images[1], str(folder / "second.jpg"), quality=95)
    return [folder / "first.png", folder / "second.jpg"]


def parse_predictions(out: str) -> dict[str, list[tuple[str, float]]]:
    result, current = {}, None
    for line in out.splitlines():
        if line.startswith("  "):
            p, name = line.split()
            result[current].append((name, float(p)))
        elif line:
            current = line
            result[current] = []
    return result


@torch.no_grad()
def test_predict_prints_top5_of_ten_patches(trained, image_files, capsys):
    from data.decode import decode_file
    from distributed.metrics import ten_patch_probabilities

    trainer, _, overrides = trained
    assert main(["--predict", *map(str, image_files), *overrides]) == 0
    printed = parse_predictions(capsys.readouterr().out)
    assert list(printed) == [str(f) for f in image_files]
    trainer.model.eval()
    for f in image_files:
        image = decode_file(f)[None]
        probs = ten_patch_probabilities(trainer.model, trainer.augment.ten_patches(image))[0]
        top = probs.topk(5)
        expected = [(trainer.data.classes[i], round(p, 4)) for i, p in zip(top.indices.tolist(), top.values.tolist())]
        assert printed[str(f)] == expected
    # The PNG is lossless: what was predicted on is the validation image itself.
    assert torch.equal(decode_file(image_files[0]), trainer.data.val.load(torch.arange(1))[0][0])


def test_predict_names_a_missing_checkpoint_or_image(trained, image_files, tmp_path, capsys):
    _, _, overrides = trained
    assert main(["--predict", str(image_files[0]), *overrides, f"checkpoint.dir={tmp_path}/none"]) == 2
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["--predict", str(tmp_path / "broken.png"), *overrides]) == 2
    assert "broken.png" in capsys.readouterr().err


# -- Figure 4 -----------------------------------------------------------------------------


@torch.no_grad()
def test_nearest_training_images_match_brute_force(trained):
    trainer, _, _ = trained
    net, augment, train_set = trainer.model.eval(), trainer.augment, trainer.data.train
    queries = trainer.data.val.load(torch.arange(3))[0]
    # Batches of 5 over 32 images: the running top-k is merged across batches, the last one short.
    found = nearest(net, augment, queries, train_set, k=4, batch_size=5)
    every = fc7(net, augment, train_set.load(torch.arange(len(train_set)))[0])
    distances = ((fc7(net, augment, queries)[:, None] - every[None]) ** 2).sum(-1).sqrt()
    brute = distances.topk(4, dim=1, largest=False)
    torch.testing.assert_close(found.distances, brute.values)
    assert torch.equal(found.indices, brute.indices)


def test_figures_command_writes_figure3_and_figure4(trained, image_files, tmp_path):
    from PIL import Image

    from distributed.figure4 import NEIGHBOURS, THUMB

    _, _, overrides = trained
    assert main(["--figures", str(tmp_path), *map(str, image_files), *overrides]) == 0
    assert Image.open(tmp_path / "figure3_conv1.png").size[0] > 0
    width, height = Image.open(tmp_path / "figure4_neighbours.png").size
    assert (width, height) == ((NEIGHBOURS + 1) * (THUMB + 4) + 4, 2 * (THUMB + 4) + 4)
    assert Image.open(tmp_path / "figure4_predictions.png").size[0] > 0


# -- ONNX ---------------------------------------------------------------------------------

ONNX_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
"""|onnxruntime - torch| <= 1e-5 + 1e-4 |torch| for every logit (float32 both; measured ~1e-7)."""


@torch.no_grad()
def test_grouped_network_equals_the_towers():
    from model.export import grouped_state_dict
    from model.onnx_export import grouped_network

    for towers in (2, 1):
        cfg = ModelConfig(num_classes=10, towers=towers, bias_init=0.1)
        model = AlexNet(cfg).eval()
        model.init_paper(0)
        grouped = grouped_network(cfg)
        grouped.load_state_dict(grouped_state_dict(model.state_dict(), towers))
        x = torch.randn(2, 3, CROP, CROP) * 60
        torch.testing.assert_close(grouped(x), model(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_onnx_export_matches_onnxruntime(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxscript", reason="onnxscript (torch's ONNX exporter) is not installed (pip install onnxscript)")
    trainer, _, overrides = trained
    target = tmp_path / "alexnet.onnx"
    assert main(["--onnx", str(target), *overrides]) == 0
    graph = onnx.load(str(target)).graph
    groups = [a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sorted(groups) == [1, 1, 2, 2, 2]  # conv1, conv3 whole; conv2, conv4, conv5 grouped

    images = trainer.data.val.load(torch.arange(4))[0]
    inputs = torch.cat([trainer.augment.centre(images), trainer.augment.ten_patches(images)[0]])
    expected = trainer.model.eval()(inputs)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": inputs.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, **ONNX_TOLERANCE)


# -- ablations ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, section, key, value", [
    ("relu_vs_tanh", "model", "activation", "tanh"),
    ("no_lrn", "model", "lrn", "none"),
    ("non_overlapping_pool", "model", "pooling", "non_overlapping"),
    ("one_tower", "model", "towers", 1),
    ("no_pca", "data", "pca_std", 0.0),
    ("no_dropout", "model", "dropout", 0.0),
])
def test_ablation_overlay_changes_only_its_key(name, section, key, value):
    from distributed.config import to_dict

    quickstart = [ROOT / "config.yaml", ROOT / "experiments" / "quickstart.yaml"]
    base = to_dict(load_config(quickstart))
    ablated = to_dict(load_config([*quickstart, ROOT / "experiments" / "ablations" / f"{name}.yaml"]))
    assert ablated[section][key] == value != base[section][key]
    base[section][key] = value
    assert ablated == base


def test_ablation_document_reports_deltas_and_the_figure1_ratio():
    from bench.ablations import document, epochs_to_target, parse_args

    def run(name, top1, top5, epochs=()):
        return {"name": name, "errors": {"centre crop": (top1, top5), "10 patches": (top1, top5)},
                "train_epoch_top1": list(epochs), "steps_per_epoch": 10, "seconds": 1.0, "command": []}

    relu, tanh = run("figure1_relu", 0.2, 0.0, [0.8, 0.4, 0.25]), run("figure1_tanh", 0.5, 0.1, [0.9] * 17 + [0.24])
    assert epochs_to_target(relu) == 3 and epochs_to_target(tanh) == 18
    text = document({"baseline": [run("baseline", 0.25, 0.0)], "no_lrn": [run("no_lrn", 0.262, 0.01)]},
                    {"figure1_relu": relu, "figure1_tanh": tanh}, parse_args([]))
    assert "| no_lrn | `no_lrn.yaml` | 0.262 | +1.2% | 0.010 | +1.0% |" in text
    assert "ReLU 3, tanh 18: ReLU is **6.0x** faster" in text
    seeds = {"baseline": [run("baseline", 0.2, 0.0), run("baseline", 0.3, 0.0)],
             "no_pca": [run("no_pca", 0.3, 0.1), run("no_pca", 0.4, 0.0)]}
    text = document(seeds, {}, parse_args(["--seeds", "0", "1", "--no-figure1"]))
    assert "| no_pca | `no_pca.yaml` | 0.350 (0.300, 0.400) | +10.0% | 0.050 (0.100, 0.000) | +5.0% |" in text
    unfinished = run("figure1_tanh", 0.9, 0.5, [0.9] * 30)
    text = document({"baseline": [run("baseline", 0.25, 0.0)]}, {"figure1_relu": relu, "figure1_tanh": unfinished},
                    parse_args([]))
    assert "after 30 epochs, so ReLU is **more than 10.0x** faster" in text


def test_ablation_document_keeps_the_notes_written_by_hand(tmp_path):
    from bench.ablations import NOTES_MARKER, write_keeping_notes

    out = tmp_path / "ABLATIONS.md"
    write_keeping_notes(out, "# first\n")
    assert out.read_text() == "# first\n\n" + NOTES_MARKER + "\n"
    out.write_text(out.read_text() + "## Reading the table\nby hand\n")
    write_keeping_notes(out, "# second\n")
    assert out.read_text() == "# second\n\n" + NOTES_MARKER + "\n## Reading the table\nby hand\n"
