"""The venv's own `tensorboard` binary, started as a user starts it and read over its HTTP API."""

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

URL = re.compile(r"TensorBoard \S+ at (http://\S+/) ")


class Served:
    """A running TensorBoard's scalars: its runs, their tags, one tag's series."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **query: str):
        with urllib.request.urlopen(self.url + path + ("?" + urllib.parse.urlencode(query) if query else ""),
                                    timeout=30) as reply:
            return json.load(reply)

    def tags(self) -> dict[str, set[str]]:
        """{run: its scalar tags} (a run is a folder of event files, "." for the log dir itself)."""
        return {run: set(tags) for run, tags in self.get("data/plugin/scalars/tags").items()}

    def series(self, run: str, tag: str) -> list[tuple[int, float]]:
        """(step, value) of one scalar, in step order."""
        return [(step, value) for _, step, value in self.get("data/plugin/scalars/scalars", run=run, tag=tag)]


@contextmanager
def serving(command: list[str] | str, cwd: Path, log: Path, runs: set[str], limit_s: float = 120) -> Iterator[Served]:
    """Start `command` (a TensorBoard command line; a string runs through bash), wait for the address it prints
    and until it serves scalars of every run in `runs`, and stop it at the end. Its output goes to `log`."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command if isinstance(command, list) else ["bash", "-c", f"exec {command}"], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + limit_s
        while not (found := URL.search(log.read_text())):
            assert proc.poll() is None, f"tensorboard ended (rc {proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"tensorboard printed no address in {limit_s} s:\n{log.read_text()}"
            time.sleep(0.2)
        served = Served(found.group(1))
        while not runs <= served.tags().keys():  # it scans the log folder after the server is up
            assert time.monotonic() < deadline, f"tensorboard served no scalars of {runs} in {limit_s} s:\n" \
                                                f"{served.tags()}\n{log.read_text()}"
            time.sleep(0.5)
        yield served
    finally:
        proc.terminate()
        proc.wait(30)
