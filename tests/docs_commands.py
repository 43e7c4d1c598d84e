"""The shell commands README.md and docs/*.md show, and a copy of the project to run them in as a user would.

A command is a line of a ```sh block (lines ending in a backslash, or inside an open quote, joined),
its comment removed. It is named by its words (`key`), so re-wrapping a line changes nothing.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(?P<indent>[ \t]*)```sh\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)


@dataclass(frozen=True)
class Shown:
    """One command as a document shows it."""

    where: str
    """The document and line: "README.md:41"."""
    text: str
    """As written (continuation lines joined by their backslash-newlines), without its comment."""

    @property
    def key(self) -> str:
        return key(self.text)


def key(text: str) -> str:
    """The command's words, one space apart."""
    return " ".join(text.replace("\\\n", " ").split())


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def shown_commands(root: Path) -> list[Shown]:
    """Every command of every ```sh block of the documents, in their order."""
    found = []
    for doc in documents(root):
        text = doc.read_text()
        for block in FENCE.finditer(text):
            first = text.count("\n", 0, block.start("body")) + 1
            indent = len(block.group("indent"))
            lines = [line[indent:] for line in block.group("body").splitlines()]
            found += [Shown(f"{doc.relative_to(root)}:{first + n}", command) for n, command in _commands(lines)]
    return found


def _commands(lines: list[str]):
    """(line index, command) of each logical line: continued by a trailing backslash or an open quote."""
    pending, start = "", 0
    for n, line in enumerate(lines):
        if not pending:
            start = n
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\") or _open_quote(pending):
            continue
        command, pending = _without_comment(pending).strip(), ""
        if command:
            yield start, command


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def _without_comment(text: str) -> str:
    """`text` up to a `#` that starts a word outside quotes, as the shell reads a comment."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


def copy_project(root: Path, target: Path) -> Path:
    """The project's files as a fresh clone has them (what .gitignore names left out), with `.venv` the
    interpreter running the suite (a link to its venv) and the C++ kernels already built."""
    from kernels import built
    from model.lrn.ops import KERNEL as LRN_KERNEL
    from training.optimizer import ONE_PASS

    ignored = [line.strip().strip("/") for line in (root / ".gitignore").read_text().splitlines()]
    shutil.copytree(root, target, ignore=shutil.ignore_patterns(".git", *(p for p in ignored if p and not p.startswith("#"))))
    (target / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    for kernel in (LRN_KERNEL, ONE_PASS):
        if built(kernel) is not None:  # built (or found) here once; each copy would take a minute to build its own
            folder = kernel.build_folder()
            shutil.copytree(folder, target / folder.relative_to(root), ignore=shutil.ignore_patterns("lock", ".ninja_lock"))
    return target


@dataclass(repr=False)
class Done:
    """What a command did."""

    rc: int
    out: str
    err: str
    root: Path

    def __repr__(self) -> str:
        return f"exit status {self.rc}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


def run(text: str, root: Path, env: dict[str, str], limit_s: float) -> Done:
    """`text` through bash in `root`, as a user's shell runs it. Past `limit_s`, Ctrl-C as a terminal sends it
    (torchrun's workers, in sessions of their own, are stopped by their launcher), then SIGKILL."""
    proc = subprocess.Popen(["bash", "-c", text], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return Done(proc.returncode, out, err, root)
