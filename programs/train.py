"""The training job: `torchrun --nproc_per_node=2 -m distributed.main [--config F]... [section.key=value ...]`.
Commands (config/cli.py): train (the default), config, describe, evaluate. The config is checked and the
run's folders claimed before any process group starts; the group is always torn down; Ctrl-C ends with exit
status 130 (docs/ARCHITECTURE.md, "Launching"). One trained net in one process: `python -m results`."""

import argparse
import os
import signal
import sys

import torch.distributed as dist
import yaml

from checkpoints.folder import CheckpointFolder
from checkpoints.store import CheckpointError
from checkpoints.trained import checkpoint_paths
from config import cli
from config.schema import Config, to_dict
from distributed import layout
from model.summary import layer_table
from training.build import check_data, check_memory, choose_step


def lost_peer(err: RuntimeError) -> bool:
    """A collective failed because another process died or stalled (gloo raises plain RuntimeErrors)."""
    return isinstance(err, dist.DistError) or "/gloo/" in str(err)


LAUNCHED = "ALEXNET_LAUNCHED_BY_RUN_SH"
"""Set by ./run.sh's launcher for its workers: it says Ctrl-C's one line, so they say none."""


def checked(args: argparse.Namespace, env: dict[str, str] | None = None) -> tuple[Config, layout.Plan]:
    """The config and this process's layout (from torchrun's variables in `env`, default os.environ), with
    everything that can refuse them checked before any process group."""
    cfg = cli.load(args)
    plan = layout.plan_from_env(cfg, env)
    choose_step(plan, cfg.train)  # refuses a GPU-only switch on a CPU, a one-pass-only one in another layout
    check_data(cfg)
    check_memory(cfg, plan)
    return cfg, plan


def sources(args: argparse.Namespace) -> str:
    """The config files layered, in order, and the overrides taken, as training's first line names them."""
    files = " + ".join([cli.BASE_CONFIG.name, *map(str, args.config)])
    return f"config: {files}; overrides: {' '.join(args.overrides) or 'none'}"


def train(args: argparse.Namespace) -> int:
    cfg, plan = checked(args)
    if plan.logs:
        print(f"training, {sources(args)}", flush=True)
    if plan.logs and plan.restarts_share_store:
        print("warning: with --max-restarts, launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
              "or a restart may fail to connect (docs/SCALING.md)", file=sys.stderr, flush=True)
    checkpoints = CheckpointFolder(cfg, plan)
    interrupt = _Interrupt()
    started = []  # the trainer, once built: it knows where the run stopped
    try:
        return _train(cfg, plan, checkpoints, started, interrupt)
    except KeyboardInterrupt:
        if LAUNCHED not in os.environ:
            newest = checkpoints.newest()
            print(f"rank {plan.rank}: interrupted at step {started[0].step if started else 0}; newest complete "
                  f"checkpoint: {newest or 'none'} (the same command with train.resume=true continues it)",
                  file=sys.stderr, flush=True)
        return 130
    finally:
        if not interrupt.seen:  # an interrupted process is on its way out; torchrun may send Ctrl-C again
            interrupt.restore()


def _train(cfg: Config, plan: layout.Plan, checkpoints: CheckpointFolder, started: list, interrupt: "_Interrupt") -> int:
    from distributed.feed import loader_failure  # heavy imports only when training
    from training.metrics import LogFailed
    from training.saved_state import NonFiniteLoss
    from training.trainer import Trainer

    try:
        with checkpoints.claim():  # probed and locked before any process group
            try:
                started.append(Trainer(cfg, layout.start(plan, cfg.parallel.timeout_s), checkpoints))
                started[0].run()
            finally:
                layout.stop()
    except NonFiniteLoss as err:  # every process stops at the same step, the last good checkpoint kept
        print(f"rank {plan.rank}: {err}", file=sys.stderr, flush=True)
        return 1
    except (CheckpointError, LogFailed, RuntimeError) as err:
        loader = loader_failure(err)
        if isinstance(err, RuntimeError) and not lost_peer(err) and loader is None:
            raise
        if interrupt.seen:  # Ctrl-C reached every process: a peer that stopped first is no lost peer
            raise KeyboardInterrupt from None
        if loader is not None:
            print(f"rank {plan.rank}: at step {started[0].step if started else 0}, {loader}", file=sys.stderr, flush=True)
            return 1
        # Name who noticed and where (steps done), so the dead or stalled peer can be found in its log.
        lost = "" if isinstance(err, OSError) else f"peer lost at step {started[0].step if started else 0}: "
        print(f"rank {plan.rank}: {lost}{err}", file=sys.stderr, flush=True)
        return 1
    return 0


class _Interrupt:
    """Ctrl-C as one KeyboardInterrupt: the terminal signals every process and torchrun forwards the
    signal again, so the later ones are ignored rather than breaking the clean-up of the first."""

    def __init__(self) -> None:
        self.seen = False
        self._previous = signal.signal(signal.SIGINT, self._first)

    def _first(self, signum, frame) -> None:
        if not self.seen:
            self.seen = True
            raise KeyboardInterrupt

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


def show_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(to_dict(cli.load(args)), sort_keys=False), end="")
    return 0


def describe(args: argparse.Namespace) -> int:
    cfg = cli.load(args)
    if layout.plan_from_env(cfg).rank == 0:
        print(layer_table(cfg.model))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from training.evaluation import evaluate_checkpoints, report

    cfg, plan = checked(args)
    paths = checkpoint_paths(cfg, args.checkpoint)  # every process checks, so none waits for a peer that gave up
    try:
        rates = evaluate_checkpoints(cfg, paths, layout.start(plan, cfg.parallel.timeout_s))
    finally:
        layout.stop()
    if plan.rank == 0:
        print(report(paths, rates), flush=True)
    return 0


def _checkpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", default=[], metavar="DIR|FILE", type=cli.path_option,
                        help="a checkpoint folder, a checkpoint.dir (its newest checkpoint) or an exported "
                             ".safetensors file (repeat for an ensemble); default: the newest checkpoint in "
                             "checkpoint.dir")


COMMANDS = {
    "train": cli.Command("train (the default command)", train),
    "config": cli.Command("print the resolved config: every key with its value, as YAML", show_config),
    "describe": cli.Command("print the layer table", describe),
    "evaluate": cli.Command("top-1/top-5 validation error, centre crop and ten patches, of a checkpoint "
                            "or an ensemble of checkpoints", evaluate, _checkpoints),
}


def main(argv: list[str] | None = None) -> int:
    return cli.main("python -m distributed.main", __doc__, COMMANDS, argv, default="train")


if __name__ == "__main__":
    sys.exit(main())
