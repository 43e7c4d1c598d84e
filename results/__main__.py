"""`python -m results COMMAND [--config F]... [section.key=value ...]`: use a trained net in one process.
Commands: predict (top-5 classes of images), figures (Figure 3, and Figure 4 for images given), export (one
grouped, Caffe-named safetensors file with its class names and mean), onnx (one ONNX graph that takes pixels).
Each loads the newest checkpoint in checkpoint.dir, or --checkpoint: a checkpoint folder or an exported file
(whose model config a config given with it must agree with)."""

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from checkpoints.trained import checkpoint_paths
from checkpoints.weights import SUFFIX, is_weights_file, recorded_model, save_weights
from config import cli
from config.errors import UserError
from config.loading import load_config
from config.schema import Config, ConfigError
from files import create_root
from model.export import grouped_state_dict

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
    """The config and the checkpoint to load. A weights file's model config is the layer under the --config
    files and overrides, so the file needs none; one that disagrees with it is refused (checkpoint_paths)."""
    recorded = None
    if args.checkpoint and is_weights_file(args.checkpoint):
        recorded = {"model": recorded_model(args.checkpoint)}
        try:
            load_config([cli.BASE_CONFIG, recorded])
        except ConfigError as err:
            raise UserError(f"weights file {args.checkpoint}: its model config: {err}") from None
    cfg = cli.load(args, recorded)
    return cfg, checkpoint_paths(cfg, [args.checkpoint] if args.checkpoint else [])[0]


def _predictor(args: argparse.Namespace, device: torch.device | None = None):
    """The trained net the arguments name, with what using it needs (results/predict.py), and where it was."""
    from results.predict import Predictor

    cfg, source = _loaded(args)
    return Predictor.load(cfg, source, device or _device(cfg)), source


def predict(args: argparse.Namespace) -> int:
    from results.predict import decode_images, format_predictions

    images = decode_images(args.image)  # a file that cannot be read is refused before the net is loaded
    predictor, _ = _predictor(args)
    for name, image in zip(args.image, images):  # each printed as soon as it is known: the progress
        (top,) = predictor.top5(image[None].to(predictor.augment.mean.device))
        print(format_predictions(name, top), flush=True)
    return 0


def figures(args: argparse.Namespace) -> int:
    from results.figure3 import save_conv1_figure

    _out_folder(args.out)
    predictor, _ = _predictor(args)
    if args.image:
        predictor.training_set()  # Figure 4's neighbours: refused now, before anything is written
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
    predictor, source = _predictor(args, CPU)
    save_weights(predictor.net.state_dict(), predictor.cfg.model, predictor.preprocessing, args.out)
    print(f"exported {source} to {args.out}")
    return 0


def onnx(args: argparse.Namespace) -> int:
    from results.onnx import export_onnx

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:  # torch's exporter needs both: say so before loading anything
        raise UserError(f"onnx needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    _out_file(args.out)
    predictor, source = _predictor(args, CPU)
    cfg = predictor.cfg.model
    export_onnx(cfg, grouped_state_dict(predictor.net.state_dict(), cfg.towers), predictor.preprocessing, args.out)
    print(f"exported {source} to {args.out}")
    return 0


def _options(out: str | None = None, images: str | None = None, required: bool = False):
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", metavar="DIR|FILE", type=cli.path_option,
                            help=f"a checkpoint folder, a checkpoint.dir (its newest checkpoint) or a {SUFFIX} "
                                 "weights file (default: the newest checkpoint in checkpoint.dir)")
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
    "export": cli.Command("write one grouped, Caffe-named state dict with its class names and mean as safetensors", export,
                          _options(out=f"FILE{SUFFIX} to write")),
    "onnx": cli.Command("write one ONNX graph: uint8 pixels of the centre crop in, logits out", onnx,
                        _options(out="FILE to write")),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main("python -m results", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
