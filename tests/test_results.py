"""What a trained net is used for (Figure 3, predict, Figure 4, ONNX) against direct computations."""

import json

import pytest
import torch

from bench.workers import run_workers
from config.model import ModelConfig
from distributed.reductions import from_every_tower
from model.alexnet import AlexNet
from results.__main__ import main as results_main
from results.figure3 import TOWER_GAP, conv1_figure
from results.neighbours import fc7, nearest
from tests.image_files import jpeg, png, write_image
from tests.trainer_runs import train_scalars
from training.conv1_figure import KERNELS_PER_ROW, colourfulness, conv1_kernels
from training.metrics import MetricLogger

CROP = 227


# -- Figure 3 -----------------------------------------------------------------------------


def test_conv1_figure_has_48_kernels_per_tower_in_place():
    model = AlexNet(ModelConfig(num_classes=10))
    model.init_paper(0)
    kernels = conv1_kernels(model)
    assert sorted(kernels) == [0, 1] and all(k.shape == (48, 3, 11, 11) for k in kernels.values())
    figure = conv1_figure(kernels)
    padding = 1
    cell = 11 + padding
    tower_height = 48 // KERNELS_PER_ROW * cell + padding
    assert figure.shape == (3, 2 * tower_height + TOWER_GAP, KERNELS_PER_ROW * cell + padding)
    for tower, weights in kernels.items():
        for k, w in enumerate(weights):
            row, col = divmod(k, KERNELS_PER_ROW)
            top = tower * (tower_height + TOWER_GAP) + padding + row * cell
            left = padding + col * cell
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
    kernels = conv1_kernels(model)
    logger.conv1_kernels(kernels, step=3)
    logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["kernels/conv1_tower0", "kernels/conv1_tower1"]
    assert train_scalars(tmp_path, "kernels/colour_tower1") == [pytest.approx(colourfulness(kernels[1]))]


def _gather_kernels(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist

    model = AlexNet(ModelConfig(num_classes=10), tower_indices=(rank,))
    model.init_paper(0)
    kernels = from_every_tower(conv1_kernels(model), dist.group.WORLD)
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
    write_image(folder / "first.png", png(images[0]))
    write_image(folder / "second.jpg", jpeg(images[1], quality=95))
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

    trainer, _, overrides = trained
    assert results_main(["predict", *(w for f in image_files for w in ("--image", str(f))), *overrides]) == 0
    printed = parse_predictions(capsys.readouterr().out)
    assert list(printed) == [str(f) for f in image_files]
    trainer.model.eval()
    for f in image_files:
        image = decode_file(f)[None]
        patches = trainer.augment.ten_patches(image)
        probs = torch.stack([trainer.model(p).softmax(1) for p in patches]).mean(0)[0]
        top = probs.topk(5)
        expected = [(trainer.data.classes[i], round(p, 4)) for i, p in zip(top.indices.tolist(), top.values.tolist())]
        assert printed[str(f)] == expected
    # The PNG is lossless: what was predicted on is the validation image itself.
    assert torch.equal(decode_file(image_files[0]), trainer.data.val.load(torch.arange(1))[0][0])


def test_predict_names_a_missing_checkpoint_or_image(trained, image_files, tmp_path, capsys):
    _, _, overrides = trained
    assert results_main(["predict", "--image", str(image_files[0]), *overrides, f"checkpoint.dir={tmp_path}/none"]) == 2
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert results_main(["predict", "--image", str(tmp_path / "broken.png"), *overrides]) == 2
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

    from results.figure4 import NEIGHBOURS, THUMB

    _, _, overrides = trained
    images = [w for f in image_files for w in ("--image", str(f))]
    assert results_main(["figures", "--out", str(tmp_path), *images, *overrides]) == 0
    assert Image.open(tmp_path / "figure3_conv1.png").size[0] > 0
    width, height = Image.open(tmp_path / "figure4_neighbours.png").size
    assert (width, height) == ((NEIGHBOURS + 1) * (THUMB + 4) + 4, 2 * (THUMB + 4) + 4)
    assert Image.open(tmp_path / "figure4_predictions.png").size[0] > 0


# -- ONNX ---------------------------------------------------------------------------------

ONNX_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
"""|onnxruntime - torch| <= 1e-5 + 1e-4 |torch| for every logit (float32 both; measured ~1e-7)."""


@torch.no_grad()
def test_grouped_network_equals_the_towers():
    from model.export import grouped_network, grouped_state_dict

    for towers in (2, 1):
        cfg = ModelConfig(num_classes=10, towers=towers, bias_init=0.1)
        model = AlexNet(cfg).eval()
        model.init_paper(0)
        grouped = grouped_network(cfg)
        grouped.load_state_dict(grouped_state_dict(model.state_dict(), towers))
        x = torch.randn(2, 3, CROP, CROP) * 60
        torch.testing.assert_close(grouped(x), model(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_onnx_takes_pixels_and_matches_the_towers_in_onnxruntime(trained, tmp_path):
    """Exported from the weights file alone: uint8 pixels of the centre crop in, the mean subtracted inside."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    pytest.importorskip("onnxscript", reason="onnxscript (torch's ONNX exporter) is not installed (pip install onnxscript)")
    trainer, _, overrides = trained
    weights, target = tmp_path / "alexnet.safetensors", tmp_path / "alexnet.onnx"
    assert results_main(["export", "--out", str(weights), *overrides]) == 0
    assert results_main(["onnx", "--out", str(target), "--checkpoint", str(weights)]) == 0
    model = onnx.load(str(target))
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sorted(groups) == [1, 1, 2, 2, 2]  # conv1, conv3 whole; conv2, conv4, conv5 grouped
    (pixels,) = model.graph.input
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in pixels.type.tensor_type.shape.dim] == ["batch", 3, CROP, CROP]
    assert "uint8 [N, 3, 227, 227], RGB values 0-255" in model.doc_string and "centre crop" in model.doc_string
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == trainer.data.classes

    images = trainer.data.val.load(torch.arange(4))[0]
    offset = (images.shape[-1] - CROP) // 2
    expected = trainer.model.eval()(trainer.augment.centre(images))
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixels": images[:, :, offset : offset + CROP, offset : offset + CROP].numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, **ONNX_TOLERANCE)
