"""The checks a config section makes of its own values, written once for every section (the model's,
the data's, and the rest in config/schema.py): a section names each key's choices, range or least value
beside the key and calls these from `__post_init__`, so every refusal reads alike, `key=value: must be ...`,
and config/loading.py prefixes the section.

Imports nothing of the project's, so model/ and data/ can use it without importing the schema.
"""

from typing import Any


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


def _plain(bound: float) -> str:
    """A bound as a person writes it: 1 rather than 1.0, 31536000 rather than 3.1536e+07."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)
