"""The one class of user errors, and the one place an error in what the user handed in becomes one.

A config value, a missing checkpoint or image, an absent optional package, data that
does not fit the model: each is raised as a `UserError` whose message names the thing
and a way out, before any process group starts where it can be known then, and each
program's one boundary (config/cli.py `main`) prints it as one line on stderr with exit
status 2. Anything else is a failure of the run (exit 1) or a bug (a traceback).

A reader of something the user handed in (a config file or value, an image, a checkpoint's
state) runs inside `reading(what)`: whatever its parser raises there (PyYAML's constructors,
an int of 5,000 digits, libpng, an overflow) becomes a UserError naming `what`, so a new
reader needs no list of the exceptions its library may raise.
"""

from contextlib import contextmanager
from typing import Iterator

from files.errors import Refused


class UserError(ValueError):
    """Something the user gave or asked for cannot work; the message names it."""


def one_line(text: object) -> str:
    """`text` on one line: the lines of a library's message (PyYAML's, libpng's) joined, blank ones dropped."""
    return " / ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe(err: BaseException) -> str:
    """An exception as one line: its message, or its type where the message says nothing alone."""
    message = one_line(err)
    if isinstance(err, (ValueError, OSError)) and message:
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


@contextmanager
def reading(what: str, error: type[UserError] = UserError) -> Iterator[None]:
    """Run a block that reads `what` (a file or value the user handed in): any Exception raised in it becomes
    `error` whose message names `what`. A UserError or a file refused by files/ passes as it is (each names
    its thing already); so does anything that is not an Exception (Ctrl-C)."""
    try:
        yield
    except (UserError, Refused):
        raise
    except Exception as err:
        raise error(f"{what}: {describe(err)}") from None
