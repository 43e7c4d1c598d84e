"""What ./run.sh runs: the run checked in this one process, then torchrun's own launcher in this process,
each of its outcomes said in one line.

    NPROC=P python -m programs.launch [--config FILE]... [section.key=value ...]

The arguments are training's, with --config experiments/quickstart.yaml first when they name none. P is 2
on CPU, 1 on one GPU, 2 with more. What is checked, how a failed or killed worker is reported and what
Ctrl-C does: docs/ARCHITECTURE.md, "Launching"."""

import argparse
import logging
import os
import shlex
import signal
import sys

import torch
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from checkpoints.folder import CheckpointFolder
from config import cli
from config.errors import UserError
from programs import train as training

QUICKSTART = "experiments/quickstart.yaml"
"""The main job's recipe: what ./run.sh trains unless --config names another."""
DEFAULT_SIGNALS = "SIGTERM,SIGHUP,SIGQUIT"
"""torchrun's own handling, less SIGINT: that one is _FirstInterrupt's."""


def processes() -> int:
    """NPROC, or 2 on CPU, 1 on one GPU (one process holds both towers: the fast layout), 2 with more."""
    given = os.environ.get("NPROC", "")
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UserError(f"NPROC={given!r}: must be a number of processes, at least 1")
        return int(given)
    return 1 if torch.cuda.device_count() == 1 else 2


def torchrun_env(nproc: int) -> dict[str, str]:
    """The variables torchrun gives rank 0 of `nproc` processes on one machine: the layout checked here."""
    return {"WORLD_SIZE": str(nproc), "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(nproc)}


def worker_words(args: argparse.Namespace) -> list[str]:
    """The training arguments each worker gets: the config files, then the overrides."""
    return [*(word for path in args.config for word in ("--config", str(path))), *args.overrides]


def rerun_command(args: argparse.Namespace, resume: bool) -> str:
    """The ./run.sh command, as the user gave it (NPROC and PYTHON kept when they were set), that runs this
    training again: with train.resume=true in place of any train.resume given, it continues from the newest
    checkpoint."""
    overrides = [o for o in args.overrides if o.partition("=")[0] != "train.resume"] if resume else args.overrides
    words = worker_words(argparse.Namespace(config=args.config, overrides=overrides))
    env = [f"{name}={os.environ[name]}" for name in ("NPROC", "PYTHON") if os.environ.get(name)]
    return shlex.join([*env, "./run.sh", *words, *(["train.resume=true"] if resume else [])])


class _FirstInterrupt:
    """Ctrl-C as torchrun's own signal handler takes it (a SignalException, on which the agent stops the
    workers with the same signal and waits for them), once: a second one while they stop is ignored, where
    torchrun's handler would raise again and leave them running."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum, frame) -> None:
        if not self.seen:
            self.seen = True
            raise SignalException("Ctrl-C", sigval=signal.SIGINT)


def launch(args: argparse.Namespace) -> int:
    nproc = processes()
    run = argparse.Namespace(**{**vars(args), "config": args.config or [QUICKSTART]})
    cfg, plan = training.checked(run, torchrun_env(nproc))
    checkpoints = CheckpointFolder(cfg, plan)
    checkpoints.check_unclaimed()

    for handler in logging.getLogger("torch.distributed").handlers:  # torchrun's log lines: said here instead
        handler.setLevel(logging.CRITICAL)
    # Elastic restarts must not reuse the agent's store, which still holds the dead workers' addresses
    # (pytorch/pytorch#135712; docs/SCALING.md).
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    os.environ[training.LAUNCHED] = "1"  # the workers leave Ctrl-C's line to this process
    options = torchrun.parse_args(["--standalone", f"--nproc_per_node={nproc}", f"--signals-to-handle={DEFAULT_SIGNALS}",
                                   "-m", "distributed.main", *worker_words(run)])
    signal.signal(signal.SIGINT, _FirstInterrupt())
    try:
        torchrun.run(options)
    except ChildFailedError as err:
        return _failed(err)
    except SignalException as err:
        newest = checkpoints.newest()
        how = "interrupted" if err.sigval == signal.SIGINT else f"stopped by {err.sigval.name}"
        if newest is None:
            print(f"{how} before the first checkpoint; to start again: {rerun_command(args, resume=False)}",
                  file=sys.stderr, flush=True)
        else:
            print(f"{how}; newest complete checkpoint: {newest}; to continue from it: {rerun_command(args, resume=True)}",
                  file=sys.stderr, flush=True)
        return 128 + err.sigval
    return 0


def _failed(err: ChildFailedError) -> int:
    """The exit status of a run whose workers failed: that of one which said why (2 for a user error), else, when
    every one was killed, 128 + the signal that killed the first, named in one line. torchrun stops the others
    with SIGTERM once one fails, so a SIGTERM is the cause only when nothing else is."""
    failures = sorted(err.failures.items(), key=lambda item: item[1].timestamp)
    said = [failure.exitcode for _, failure in failures if failure.exitcode > 0]
    if said:
        return said[0]
    rank, failure = next(((r, f) for r, f in failures if f.signal_name() != "SIGTERM"), failures[0])
    print(f"error: rank {rank} (pid {failure.pid}) was killed by {failure.signal_name()}", file=sys.stderr, flush=True)
    return 128 - failure.exitcode


COMMANDS = {"train": cli.Command("train under torchrun (the default command)", launch)}


def main(argv: list[str] | None = None) -> int:
    try:
        return cli.main("./run.sh", __doc__, COMMANDS, argv, default="train")
    except KeyboardInterrupt:  # Ctrl-C while checking, before torchrun started anything
        print("interrupted before training started", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
