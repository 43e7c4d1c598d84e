"""The command line, written once for the two programs, and the one place a user error becomes exit 2.

    python -m distributed.main [train] [--config FILE]... [section.key=value ...]
    python -m distributed.main describe | evaluate [--checkpoint DIR|FILE]...
    python -m results predict --image FILE... | figures --out DIR [--image FILE]... | export --out FILE | onnx --out FILE

A command names the action (training is the default, so `torchrun -m distributed.main` and
./run.sh need none); every command takes YAML files layered over config.yaml with
--config and then `section.key=value` overrides as its positional words. Files a command
reads or writes are options, so no word is ever both.
"""

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from config.errors import UserError
from config.loading import load_config
from config.schema import Config
from files import Refused

BASE_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def _override(word: str) -> str:
    key, sep, _ = word.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"{word!r} is not section.key=value (files go after an option such as --image)")
    return word


def parse(prog: str, doc: str, commands: dict[str, Command], argv: list[str], default: str | None = None) -> argparse.Namespace:
    """The command and its arguments; with `default`, words that name no command run that one."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        each = sub.add_parser(name, help=command.help, description=command.help)
        each.add_argument("--config", action="append", default=[], metavar="FILE",
                          help="YAML layered over config.yaml, in order (repeatable)")
        command.options(each)
        each.add_argument("overrides", nargs="*", type=_override, metavar="section.key=value")
    if default and (not argv or argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = [default, *argv]
    return parser.parse_args(argv)


def load(args: argparse.Namespace, recorded: dict | None = None) -> Config:
    """config.yaml, then `recorded` (the sections a trained file records), then each --config, then the overrides."""
    return load_config([BASE_CONFIG, recorded or {}, *args.config], args.overrides)


def quiet_known_warnings() -> None:
    """Warnings we have read and accepted, silenced where the program starts."""
    # One process reading a checkpoint several wrote is what evaluation and the result commands do.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def main(prog: str, doc: str, commands: dict[str, Command], argv: list[str] | None, default: str | None = None) -> int:
    """Parse, run the command, and turn a UserError (or a file refused by files/) into its message and exit
    status 2."""
    args = parse(prog, doc, commands, sys.argv[1:] if argv is None else argv, default)
    quiet_known_warnings()
    try:
        return commands[args.command].run(args)
    except (UserError, Refused) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
