"""The commands that use a trained net instead of training one: --evaluate, --predict, --figures,
--export, --onnx.

Each runs in one process holding both towers (`python -m distributed.main --predict a.jpg`);
under torchrun only rank 0 does the work, except --evaluate, which runs in the layout torchrun
starts (one tower per process, replicas sharing the validation set), as the trainer evaluates.
The config is loaded first, as for training,
so `checkpoint.dir`, `data.root` and the model's shape come from the same files and
overrides; a missing checkpoint or image is a ConfigError (exit 2).
"""

import argparse
import importlib.util
import re
import sys
import warnings
from pathlib import Path

from distributed import layout
from distributed.config import Config, ConfigError
from distributed.layout import Plan

_OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.\w+=")
_LISTS = ("evaluate", "predict", "figures")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evaluate", nargs="*", metavar="CHECKPOINT",
                        help="top-1/top-5 validation error, centre crop and ten patches, of the newest "
                             "checkpoint or of the ensemble of the checkpoint folders given, and exit")
    parser.add_argument("--predict", nargs="+", metavar="IMG",
                        help="print the top-5 classes of each image (newest checkpoint) and exit")
    parser.add_argument("--figures", nargs="+", metavar=("DIR", "IMG"),
                        help="write Figure 3 (conv1 kernels) to DIR, and Figure 4 (top-5 and FC7 "
                             "neighbours) for the images given, and exit")
    parser.add_argument("--export", metavar="FILE",
                        help="write the newest checkpoint as one grouped, Caffe-named state dict and exit")
    parser.add_argument("--onnx", metavar="FILE", help="export the newest checkpoint as one ONNX graph and exit")


def take_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Move `section.key=value` words that a list option swallowed (`--predict a.jpg x.y=1`) to the overrides."""
    for name in _LISTS:
        values = getattr(args, name)
        if values:
            setattr(args, name, [v for v in values if not _OVERRIDE.match(v)])
            args.overrides = [*args.overrides, *(v for v in values if _OVERRIDE.match(v))]
    for name, needs in (("predict", "an image"), ("figures", "a folder")):
        if getattr(args, name) == []:  # only overrides followed it: do not fall through to training
            parser.error(f"--{name} needs {needs}")
    return args


def requested(args: argparse.Namespace) -> bool:
    return args.evaluate is not None or any((args.predict, args.figures, args.export, args.onnx))


def run(args: argparse.Namespace, cfg: Config, plan: Plan) -> int:
    """Do what was asked, on every process (--evaluate) or on rank 0 (the rest);
    a ConfigError becomes exit status 2 with its message."""
    # One process reading a checkpoint several wrote is what these commands are for; DCP warns about it.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    try:
        if args.evaluate is not None:
            _evaluate(cfg, args.evaluate, plan)
        if plan.rank != 0:
            return 0
        if args.predict:
            _predict(cfg, args.predict, plan)
        if args.figures:
            _figures(cfg, Path(args.figures[0]), args.figures[1:], plan)
        if args.export:
            _export(cfg, Path(args.export))
        if args.onnx:
            _onnx(cfg, Path(args.onnx))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return 0


def _evaluate(cfg: Config, given: list[str], plan: Plan) -> None:
    from distributed.evaluate import checkpoint_paths, evaluate, report

    paths = checkpoint_paths(cfg, given)  # every process checks, so none waits for a peer that gave up
    try:
        rates = evaluate(cfg, paths, layout.start(plan, cfg.parallel.timeout_s))
    finally:
        layout.stop()
    if plan.rank == 0:
        print(report(paths, rates), flush=True)


def _predict(cfg: Config, images: list[str], plan: Plan) -> None:
    from distributed.predict import Predictor, format_predictions

    predictor = Predictor.from_config(cfg, plan.device)
    for image, top in zip(images, predictor.top5(predictor.decode(images))):
        print(format_predictions(image, top), flush=True)


def _figures(cfg: Config, folder: Path, images: list[str], plan: Plan) -> None:
    from distributed.figures import save_conv1_figure
    from distributed.predict import Predictor

    predictor = Predictor.from_config(cfg, plan.device)
    folder.mkdir(parents=True, exist_ok=True)
    path, colour = save_conv1_figure(predictor.net, folder / "figure3_conv1.png")
    print(f"wrote {path}; colourfulness per tower: " + ", ".join(f"{t}: {c:.3f}" for t, c in colour.items()))
    if images:
        from distributed.figure4 import save_figure4

        for path in save_figure4(predictor, images, folder):
            print(f"wrote {path}")


def _export(cfg: Config, target: Path) -> None:
    """Both towers merged by model.export into one grouped state dict, written atomically."""
    import torch

    from distributed.evaluate import checkpoint_paths, load_network
    from model.export import grouped_state_dict

    source = checkpoint_paths(cfg, [])[0]
    net = load_network(cfg, source, torch.device("cpu"))
    partial = target.with_name(target.name + ".partial")
    torch.save(grouped_state_dict(net.state_dict(), cfg.model.towers), partial)
    partial.rename(target)
    print(f"exported {source} to {target}")


def _onnx(cfg: Config, target: Path) -> None:
    import torch

    from distributed.evaluate import checkpoint_paths, load_network
    from model.export import grouped_state_dict
    from model.onnx_export import export_onnx

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:  # torch's exporter needs both: say so before loading anything
        raise ConfigError(f"--onnx needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    source = checkpoint_paths(cfg, [])[0]
    net = load_network(cfg, source, torch.device("cpu"))
    export_onnx(cfg.model, grouped_state_dict(net.state_dict(), cfg.model.towers), target)
    print(f"exported {source} to {target}")
