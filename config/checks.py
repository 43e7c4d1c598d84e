"""The checks a config section makes of its own values, written once for every section (the model's,
the data's, and the rest in config/schema.py): a section names each key's choices, range or least value
beside the key and calls these from `__post_init__`, so every refusal reads alike, `key=value: must be ...`,
and config/loading.py prefixes the section.

Imports nothing of the project's, so model/ and data/ can use it without importing the schema.
"""

import os
from typing import Any

NAME_MAX = 255
"""Longest name of one file or folder, in bytes (Linux's file systems)."""
PATH_MAX = 4095
"""Longest path the kernel takes, in bytes (PATH_MAX less its terminating NUL)."""


def one_of(section: Any, **choices: tuple) -> None:
    """Each key's value is one of its choices."""
    for key, allowed in choices.items():
        value = getattr(section, key)
        if value not in allowed:
            raise ValueError(f"{key}={value!r}: must be one of {allowed}")


def from_to(section: Any, **ranges: tuple[float, float]) -> None:
    """Each key's value lies from low to high, both included (written so that NaN fails)."""
    for key, (low, high) in ranges.items():
        value = getattr(section, key)
        if not low <= value <= high:
            raise ValueError(f"{key}={value}: must be from {_plain(low)} to {_plain(high)}")


def at_least(section: Any, **minimums: float) -> None:
    """Each key's value is at least its minimum (NaN fails)."""
    for key, low in minimums.items():
        value = getattr(section, key)
        if not value >= low:
            raise ValueError(f"{key}={value}: must be at least {low}")


def paths(section: Any, *keys: str) -> None:
    """Each key's value is a path the system can take (or empty): no NUL byte, no name over NAME_MAX bytes,
    PATH_MAX in all. Checked where the config is read, so a bad one is named here rather than met as an
    OSError, or a ValueError from deep inside pathlib, wherever the path is first used."""
    for key in keys:
        why = path_problem(getattr(section, key))
        if why:
            raise ValueError(f"{key}={getattr(section, key)!r:.80}: {why}")


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file or folder, or None."""
    if "\0" in path:
        return "holds a NUL byte, which no path can"
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        return "holds a character no file name can (a lone surrogate)"
    if len(raw) > PATH_MAX:
        return f"a path of {len(raw)} bytes, over the system's {PATH_MAX}"
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return f"a name of {len(longest)} bytes ({os.fsdecode(longest[:20])}...), over the system's {NAME_MAX}"
    return None


def _plain(bound: float) -> str:
    """A bound as a person writes it: 1 rather than 1.0, 31536000 rather than 3.1536e+07."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)
