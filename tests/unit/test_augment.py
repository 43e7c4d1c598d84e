"""The paper's augmentation: crops, reflections, PCA colour noise, mean, the ten test patches."""

import math

import torch

from data.augment import Augmenter
from data.stats import ImageStats

SIDE, CROP = 256, 227


def _stats(seed: int = 0) -> ImageStats:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    return ImageStats(
        mean_image=torch.rand(3, SIDE, SIDE, generator=g) * 255,
        channel_mean=torch.tensor([120.0, 110.0, 100.0]),
        eigenvalues=torch.tensor([20.0, 300.0, 5000.0]),
        eigenvectors=q,
    )


def _coordinates(n: int) -> torch.Tensor:
    """uint8 images whose pixel (c, y, x) encodes y in channel 0 and x in channel 1."""
    y = torch.arange(SIDE)[:, None].expand(SIDE, SIDE)
    x = torch.arange(SIDE)[None, :].expand(SIDE, SIDE)
    img = torch.stack([y, x, torch.zeros_like(y)]).clamp(max=255).to(torch.uint8)
    return img.expand(n, 3, SIDE, SIDE).contiguous()


def _zero_mean_stats(side: int = SIDE) -> ImageStats:
    s = _stats()
    return ImageStats(torch.zeros(3, side, side), torch.zeros(3), s.eigenvalues, s.eigenvectors)


def test_crops_stay_inside_and_cover_every_offset_and_flip_about_half():
    aug = Augmenter.from_stats(_zero_mean_stats(), CROP, "image", True, 0.0, torch.device("cpu"))
    images = _coordinates(64)
    tops, lefts = set(), set()
    for step in range(10):
        out = aug.train(images, torch.Generator().manual_seed(step))
        drawn = aug.draw(torch.Generator().manual_seed(step), 64, SIDE)
        assert out.shape == (64, 3, CROP, CROP)
        for patch, top, left, flip in zip(out, drawn.tops.tolist(), drawn.lefts.tolist(), drawn.flips.tolist()):
            rows, cols = patch[0, :, 0], patch[1, 0, :]
            assert torch.equal(rows, top + torch.arange(CROP).float())  # contiguous rows inside the image
            assert torch.equal(cols.flip(0) if flip else cols, left + torch.arange(CROP).float())
            tops.add(top)
            lefts.add(left)
    assert tops == lefts == set(range(SIDE - CROP + 1))
    # Half the images reflected: 100,000 draws give 0.5 +- 0.0016 (1 sd); a probability of 0.49 is 6 sd out.
    assert abs(aug.draw(torch.Generator().manual_seed(0), 100_000, SIDE).flips.float().mean().item() - 0.5) < 0.01


def test_pca_noise_is_constant_over_an_image_with_the_stated_distribution():
    stats = _stats()
    crop = 8  # the noise does not depend on the crop; small patches keep 4000 images cheap
    aug = Augmenter.from_stats(stats, crop, "image", False, 0.1, torch.device("cpu"))
    images = torch.randint(0, 256, (1, 3, SIDE, SIDE), dtype=torch.uint8).expand(4000, -1, -1, -1)
    plain = Augmenter.from_stats(stats, crop, "image", False, 0.0, torch.device("cpu"))
    rng = torch.Generator().manual_seed(1)
    noisy = aug.train(images, rng)
    clean = plain.train(images, torch.Generator().manual_seed(1))
    shift = noisy - clean
    per_image = shift[:, :, :1, :1]
    torch.testing.assert_close(shift, per_image.expand_as(shift), rtol=0, atol=1e-3)  # same for all pixels
    # shift = P (alpha * lambda/255), alpha ~ N(0, 0.1): project back onto the eigenvectors.
    alphas = (per_image.flatten(1) @ stats.eigenvectors) / (stats.eigenvalues / 255.0)
    assert torch.allclose(alphas.mean(0), torch.zeros(3), atol=0.01)
    assert torch.allclose(alphas.std(0), torch.full((3,), 0.1), rtol=0.05)


def test_mean_image_and_channel_mean_are_subtracted():
    stats = _stats()
    images = torch.full((2, 3, SIDE, SIDE), 200, dtype=torch.uint8)
    per_position = Augmenter.from_stats(stats, CROP, "image", False, 0.0, torch.device("cpu")).centre(images)
    o = (SIDE - CROP) // 2
    torch.testing.assert_close(per_position[0], 200 - stats.mean_image[:, o : o + CROP, o : o + CROP])
    per_channel = Augmenter.from_stats(stats, CROP, "channel", False, 0.0, torch.device("cpu")).centre(images)
    torch.testing.assert_close(per_channel[1, :, 5, 7], 200 - stats.channel_mean)


def test_an_exported_nets_mean_is_the_one_it_was_trained_with():
    """data/preprocessing.py keeps the mean as trained (per position [3, 256, 256], per channel [3]); the
    evaluation built from it subtracts what the training augmentation did."""
    from types import SimpleNamespace

    from data.preprocessing import Preprocessing

    stats = _stats()
    images = torch.randint(0, 256, (2, 3, SIDE, SIDE), dtype=torch.uint8)
    for mean, shape in (("image", (3, SIDE, SIDE)), ("channel", (3,))):
        preprocessing = Preprocessing.of(SimpleNamespace(classes=["a", "b"], stats=stats), mean)
        assert preprocessing.classes == ["a", "b"] and preprocessing.mean.shape == shape
        trained = Augmenter.from_stats(stats, CROP, mean, False, 0.0, torch.device("cpu"))
        evaluating = Augmenter(preprocessing.mean_image(), CROP, torch.device("cpu"))
        assert torch.equal(evaluating.ten_patches(images), trained.ten_patches(images))


def test_ten_patches_are_the_corners_the_centre_and_their_reflections():
    aug = Augmenter.from_stats(_zero_mean_stats(), CROP, "image", False, 0.0, torch.device("cpu"))
    patches = aug.ten_patches(_coordinates(2))
    assert patches.shape == (10, 2, 3, CROP, CROP)
    far, mid = SIDE - CROP, (SIDE - CROP) // 2
    expected = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    for k in range(10):
        top, left = expected[k % 5]
        p = patches[k, 1]
        assert int(p[0, 0, 0]) == top
        cols = p[1, 0]
        if k < 5:
            assert int(cols[0]) == left and int(cols[-1]) == left + CROP - 1
        else:
            assert int(cols[0]) == left + CROP - 1 and int(cols[-1]) == left
    torch.testing.assert_close(patches[4], aug.centre(_coordinates(2)))


def test_slicing_and_gather_paths_agree_exactly():
    aug = Augmenter.from_stats(_stats(), CROP, "image", True, 0.1, torch.device("cpu"))
    images = torch.randint(0, 256, (6, 3, SIDE, SIDE), dtype=torch.uint8)
    g = torch.Generator().manual_seed(4)
    tops, lefts = torch.randint(30, (6,), generator=g), torch.randint(30, (6,), generator=g)
    flips, shifts = torch.rand(6, generator=g) < 0.5, torch.randn(6, 3, generator=g)
    sliced = aug._patches_by_slicing(images, tops, lefts, flips, shifts)
    gathered = aug._patches_by_gather(images, tops, lefts, flips, shifts)
    assert torch.equal(sliced, gathered)
    assert not math.isnan(sliced.sum().item())


def test_ten_patch_prediction_averages_the_softmax_of_each_patch():
    from training.evaluation import TEN_PATCHES, log_probabilities

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    images = torch.randint(0, 256, (3, 3, 6, 6), dtype=torch.uint8)
    aug = Augmenter.from_stats(_zero_mean_stats(6), 4, "image", False, 0.0, torch.device("cpu"))
    patches = aug.ten_patches(images)
    direct = sum(torch.softmax(model(patches[k]), dim=1) for k in range(10)) / 10
    got = log_probabilities([model], aug, images, TEN_PATCHES).exp()
    torch.testing.assert_close(got, direct)
    torch.testing.assert_close(got.sum(1), torch.ones(3))
    mean_logits = torch.stack([model(p) for p in patches]).mean(0)
    assert not torch.allclose(got, torch.softmax(mean_logits, dim=1))  # not the softmax of the mean logits
