"""The one class of user errors (`UserError`: one line naming the thing and a way out, exit status 2), and
`reading(what)`, inside which whatever a reader of the user's input raises becomes one naming `what`
(docs/ARCHITECTURE.md, "The command line and user errors")."""

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
