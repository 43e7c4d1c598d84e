"""Entry point: `torchrun --nproc_per_node=2 -m distributed.main [--config F]... [section.key=value ...]`.

Loads and checks the config before any process group starts, then trains (or,
with --describe, prints the layer table) and always tears the group down.
--evaluate, --predict, --figures and --onnx use a trained net instead (distributed/tools.py).
"""

import argparse
import os
import sys
from pathlib import Path

import torch.distributed as dist

from distributed import layout, tools
from distributed.config import Config, ConfigError, load_config
from model.summary import layer_table

BASE_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distributed.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML layered over config.yaml, in order (repeatable)")
    parser.add_argument("--describe", action="store_true", help="print the layer table and exit")
    tools.add_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return tools.take_overrides(parser, parser.parse_args(argv))


def check_data(cfg: Config) -> None:
    """Open the packed data once here: a bad data.root must fail before the process group, not inside it."""
    if cfg.data.root:
        from data.packed import open_packed

        try:
            open_packed(cfg.data.root)
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None


def lost_peer(err: RuntimeError) -> bool:
    """A collective failed because another process died or stalled (gloo raises plain RuntimeErrors)."""
    return isinstance(err, dist.DistError) or "/gloo/" in str(err)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config([BASE_CONFIG, *args.config], args.overrides)
        plan = layout.plan_from_env(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.describe:
        if plan.rank == 0:
            print(layer_table(cfg.model))
        return 0
    if tools.requested(args):
        return tools.run(args, cfg, plan)
    from distributed.checkpoint import CheckpointError  # heavy imports only when training
    from distributed.trainer import Trainer

    if plan.logs and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" \
            and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        # torchrun keeps the dead generation's keys in the store it shares with restarted workers,
        # so a restart can dial a dead peer and fail (pytorch#135712); a store per generation avoids it.
        print("warning: with --max-restarts, launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
              "or a restart may fail to connect (docs/SCALING.md)", file=sys.stderr, flush=True)
    trainer = None
    try:
        check_data(cfg)  # before the group starts; only training reads the data (not --describe, --export)
        trainer = Trainer(cfg, layout.start(plan, cfg.parallel.timeout_s))
        trainer.run()
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
