"""The command line, written once for the two programs, and the one place a user error becomes exit 2.
A command names the action (training is the default); YAML files with --config, then `section.key=value`
overrides as positional words; files are options (`path_option`). `main` is each program's one error
boundary (the commands and the rules: docs/ARCHITECTURE.md, "The command line and user errors")."""

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from config.checks import path_problem
from config.errors import UserError, one_line
from config.loading import load_config
from config.schema import Config
from files import Refused

BASE_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None] = lambda parser: None


class Parser(argparse.ArgumentParser):
    """argparse's errors on one line, as every other refusal (it prints the usage first otherwise)."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


def path_option(word: str) -> Path:
    """An option's file or folder name, refused here if no path can be it (a NUL byte, a name over the
    system's limit): every option naming a file is declared with this type."""
    why = path_problem(word)
    if why:
        raise argparse.ArgumentTypeError(why)
    return Path(word)


def _override(word: str) -> str:
    key, sep, _ = word.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"{word!r} is not section.key=value (files go after an option such as --image)")
    return word


def parse(prog: str, doc: str, commands: dict[str, Command], argv: list[str], default: str | None = None) -> argparse.Namespace:
    """The command and its arguments; with `default`, words that name no command run that one."""
    parser = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        each = sub.add_parser(name, help=command.help, description=command.help)
        each.add_argument("--config", action="append", default=[], metavar="FILE", type=path_option,
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
    """Parse, run the command, and turn a UserError (or a file refused by files/) into its message on one line
    and exit status 2: the program's one boundary for what the user handed in."""
    args = parse(prog, doc, commands, sys.argv[1:] if argv is None else argv, default)
    quiet_known_warnings()
    try:
        return commands[args.command].run(args)
    except (UserError, Refused) as err:
        return refuse(err)


def refuse(err: BaseException) -> int:
    """Print `err` as the one line of a refusal; its exit status, 2. (The packing programs, which parse their own
    options, call this on what they refuse.)"""
    print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
    return 2
