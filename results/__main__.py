"""`python -m results COMMAND [--config F]... [section.key=value ...]`: use a trained net in one process.

Commands: predict (top-5 classes of images), figures (the paper's Figure 3, and
Figure 4 for images given), export (one grouped, Caffe-named state dict, as safetensors), onnx
(one ONNX graph). Each loads the newest checkpoint in checkpoint.dir, or --checkpoint: a
checkpoint folder or an exported .safetensors file; the config gives the model's shape and the
data (class names, mean) as for training.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from checkpoints.trained import checkpoint_paths, load_network
from checkpoints.weights import SUFFIX, save_weights
from config import cli
from config.errors import UserError
from config.schema import Config
from files import create_root
from model.export import grouped_state_dict
from training.build import check_data

CPU = torch.device("cpu")


def _device(cfg: Config) -> torch.device:
    return torch.device("cuda") if cfg.train.device != "cpu" and torch.cuda.is_available() else CPU


def _out_file(out: Path) -> Path:
    """--out of a command that writes one file: refused before anything is loaded when it cannot be written
    (the file itself is written whole or not at all: files.replacing)."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the file to write")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: its folder {out.parent} does not exist; create it first")
    return out


def _out_folder(out: Path) -> Path:
    """--out of `figures`: a folder, or a name for one in a folder that exists (made once there is
    something to write into it)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; figures writes into a folder")
    if not out.is_dir() and not out.parent.is_dir():
        raise UserError(f"--out {out}: its folder {out.parent} does not exist; create it first")
    return out


def _loaded(args: argparse.Namespace) -> tuple[Config, Path]:
    cfg = cli.load(args)
    return cfg, checkpoint_paths(cfg, [args.checkpoint] if args.checkpoint else [])[0]


def _predictor(args: argparse.Namespace):
    from results.predict import Predictor

    cfg, source = _loaded(args)
    check_data(cfg)  # the data's description, so a broken pack is a user error here too
    return Predictor.load(cfg, source, _device(cfg))


def predict(args: argparse.Namespace) -> int:
    from results.predict import decode_images, format_predictions

    images = decode_images(args.image)  # a file that cannot be read is refused before the net is loaded
    predictor = _predictor(args)
    for image, top in zip(args.image, predictor.top5(images.to(predictor.augment.mean.device))):
        print(format_predictions(image, top), flush=True)
    return 0


def figures(args: argparse.Namespace) -> int:
    from results.figure3 import save_conv1_figure

    _out_folder(args.out)
    predictor = _predictor(args)
    create_root(args.out)
    path, colour = save_conv1_figure(predictor.net, args.out / "figure3_conv1.png")
    print(f"wrote {path}; colourfulness per tower: " + ", ".join(f"{t}: {c:.3f}" for t, c in colour.items()))
    if args.image:
        from results.figure4 import save_figure4

        for path in save_figure4(predictor, args.image, args.out):
            print(f"wrote {path}")
    return 0


def export(args: argparse.Namespace) -> int:
    """Both towers merged by model.export into one grouped state dict, written as safetensors
    (checkpoints/weights.py) with the model config."""
    if args.out.suffix != SUFFIX:  # before loading anything
        raise UserError(f"--out {args.out}: export writes safetensors; name the file *{SUFFIX}")
    _out_file(args.out)
    cfg, source = _loaded(args)
    save_weights(load_network(cfg, source, CPU).state_dict(), cfg.model, args.out)
    print(f"exported {source} to {args.out}")
    return 0


def onnx(args: argparse.Namespace) -> int:
    from results.onnx import export_onnx

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:  # torch's exporter needs both: say so before loading anything
        raise UserError(f"onnx needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    _out_file(args.out)
    cfg, source = _loaded(args)
    net = load_network(cfg, source, CPU)
    export_onnx(cfg.model, grouped_state_dict(net.state_dict(), cfg.model.towers), args.out)
    print(f"exported {source} to {args.out}")
    return 0


def _options(out: str | None = None, images: str | None = None, required: bool = False):
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", metavar="DIR|FILE", type=cli.path_option,
                            help=f"a checkpoint folder or a {SUFFIX} weights file (default: the newest checkpoint in "
                                 "checkpoint.dir)")
        if out:
            parser.add_argument("--out", type=cli.path_option, required=True, metavar=out.split()[0], help=out)
        if images:
            parser.add_argument("--image", action="append", default=[], required=required, metavar="FILE",
                                type=cli.path_option, help=images)
    return add


COMMANDS = {
    "predict": cli.Command("print the top-5 classes of each image (ten patches)", predict,
                           _options(images="an image file (repeatable)", required=True)),
    "figures": cli.Command("write Figure 3 (conv1 kernels), and Figure 4 (top-5 and FC7 neighbours) of the images given",
                           figures, _options(out="DIR to write the PNGs into", images="an image for Figure 4 (repeatable)")),
    "export": cli.Command("write one grouped, Caffe-named state dict as safetensors", export,
                          _options(out=f"FILE{SUFFIX} to write")),
    "onnx": cli.Command("write one ONNX graph", onnx, _options(out="FILE to write")),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main("python -m results", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
