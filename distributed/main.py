"""The training job: `torchrun --nproc_per_node=2 -m distributed.main [--config F]... [section.key=value ...]`.

Commands (distributed/cli.py): train (the default), describe (the layer table),
evaluate (validation error of checkpoints, alone or as an ensemble, in the layout
torchrun starts). The config is loaded and checked before any process group starts;
the group is always torn down. The commands that use one trained net in one process
are `python -m results`.
"""

import argparse
import sys

import torch.distributed as dist

from distributed import cli, layout
from distributed.build import check_data
from distributed.checkpoint import CheckpointError
from distributed.trained import checkpoint_paths
from model.summary import layer_table


def lost_peer(err: RuntimeError) -> bool:
    """A collective failed because another process died or stalled (gloo raises plain RuntimeErrors)."""
    return isinstance(err, dist.DistError) or "/gloo/" in str(err)


def train(args: argparse.Namespace) -> int:
    from distributed.trainer import Trainer  # heavy imports only when training

    cfg = cli.load(args)
    plan = layout.plan_from_env(cfg)
    check_data(cfg)
    if plan.logs and plan.restarts_share_store:
        print("warning: with --max-restarts, launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
              "or a restart may fail to connect (docs/SCALING.md)", file=sys.stderr, flush=True)
    trainer = None
    try:
        trainer = Trainer(cfg, layout.start(plan, cfg.parallel.timeout_s))
        trainer.run()
    except CheckpointError as err:
        print(f"rank {plan.rank}: {err}", file=sys.stderr, flush=True)
        return 1
    except RuntimeError as err:
        if not lost_peer(err):
            raise
        # Name who noticed and where (steps done), so the dead or stalled peer can be found in its log.
        print(f"rank {plan.rank}: peer lost at step {trainer.step if trainer else 0}: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        layout.stop()
    return 0


def describe(args: argparse.Namespace) -> int:
    cfg = cli.load(args)
    if layout.plan_from_env(cfg).rank == 0:
        print(layer_table(cfg.model))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from distributed.evaluation import evaluate_checkpoints, report

    cfg = cli.load(args)
    plan = layout.plan_from_env(cfg)
    paths = checkpoint_paths(cfg, args.checkpoint)  # every process checks, so none waits for a peer that gave up
    check_data(cfg)
    try:
        rates = evaluate_checkpoints(cfg, paths, layout.start(plan, cfg.parallel.timeout_s))
    finally:
        layout.stop()
    if plan.rank == 0:
        print(report(paths, rates), flush=True)
    return 0


def _checkpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                        help="a checkpoint folder (repeat for an ensemble); default: the newest in checkpoint.dir")


COMMANDS = {
    "train": cli.Command("train (the default command)", train),
    "describe": cli.Command("print the layer table", describe),
    "evaluate": cli.Command("top-1/top-5 validation error, centre crop and ten patches, of a checkpoint "
                            "or an ensemble of checkpoints", evaluate, _checkpoints),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main("python -m distributed.main", __doc__, COMMANDS, argv, default="train")


if __name__ == "__main__":
    sys.exit(main())
