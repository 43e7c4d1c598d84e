"""Entry point: `torchrun --nproc_per_node=2 -m distributed.main [--config F]... [section.key=value ...]`.

Loads and checks the config before any process group starts, then trains (or,
with --describe, prints the layer table) and always tears the group down.
"""

import argparse
import sys
from pathlib import Path

from distributed import layout
from distributed.config import ConfigError, load_config
from model.summary import layer_table

BASE_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distributed.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML layered over config.yaml, in order (repeatable)")
    parser.add_argument("--describe", action="store_true", help="print the layer table and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_args(argv)


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
    from distributed.trainer import Trainer  # heavy imports only when training

    run = layout.start(plan, cfg.parallel.timeout_s)
    try:
        Trainer(cfg, run).run()
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    finally:
        layout.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
