"""Figure 4 for given images: their top-5 predictions (left) and their nearest training images in FC7 space (right).

Drawn with PIL, which torchvision already brings (matplotlib is not a dependency):
the predictions as the paper does, an image with a bar per class whose length is
its probability; the neighbours as a grid, one row per image, the image first.
"""

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from data.imageset import IMAGE_SHAPE
from files import replacing
from results.neighbours import nearest
from results.predict import Predictor

THUMB = 128
"""Side of each image in the figures, in pixels."""
NEIGHBOURS = 6
"""Training images per row, as in the paper."""
BAR_WIDTH = 180
ROW = 16


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, THUMB, THUMB] from uint8 [N, 3, 256, 256]."""
    return torch.nn.functional.interpolate(images.float(), size=(THUMB, THUMB), mode="area").round().to(torch.uint8)


def predictions_picture(images: torch.Tensor, tops: Sequence[Sequence[tuple[str, float]]]) -> Image.Image:
    """One column per image: the image, then a bar and a label for each of its top classes."""
    font = ImageFont.load_default()
    thumbs = thumbnails(images.cpu())
    rows = max(len(t) for t in tops)
    column = max(THUMB, BAR_WIDTH) + 20
    picture = Image.new("RGB", (column * len(tops), THUMB + 10 + ROW * rows + 10), "white")
    draw = ImageDraw.Draw(picture)
    for i, (thumb, top) in enumerate(zip(thumbs, tops)):
        left = i * column + 10
        picture.paste(to_pil_image(thumb), (left, 5))
        for r, (name, p) in enumerate(top):
            y = THUMB + 10 + r * ROW
            draw.rectangle([left, y + 2, left + BAR_WIDTH, y + ROW - 2], outline=(200, 200, 200))
            draw.rectangle([left, y + 2, left + round(BAR_WIDTH * p), y + ROW - 2], fill=(120, 160, 230) if r else (230, 120, 120))
            draw.text((left + 3, y + 2), f"{name} {p:.2f}", fill="black", font=font)
    return picture


def neighbours_picture(queries: torch.Tensor, neighbours: torch.Tensor) -> Image.Image:
    """One row per query: the query, then its training neighbours (uint8 [Q, k, 3, 256, 256])."""
    k = neighbours.shape[1]
    rows = torch.cat([queries.cpu()[:, None], neighbours], dim=1).flatten(0, 1)
    grid = make_grid(thumbnails(rows), nrow=k + 1, padding=4, pad_value=255)
    return to_pil_image(grid)


def save_figure4(predictor: Predictor, files: Sequence[str | Path], folder: Path) -> list[Path]:
    """Write figure4_predictions.png and figure4_neighbours.png for the image `files` into `folder`."""
    images = predictor.decode(files)
    tops = predictor.top5(images)
    train_set = predictor.training_set()
    found = nearest(predictor.net, predictor.augment, images, train_set, NEIGHBOURS,
                    predictor.cfg.train.batch_size, predictor.cfg.data.workers)
    train_images = train_set.load(found.indices.flatten())[0].view(*found.indices.shape, *IMAGE_SHAPE)
    paths = [folder / "figure4_predictions.png", folder / "figure4_neighbours.png"]
    for path, picture in zip(paths, (predictions_picture(images, tops), neighbours_picture(images, train_images))):
        with replacing(path) as out:
            picture.save(out, format="PNG")
    return paths
