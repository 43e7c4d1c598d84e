"""The config's keys by the type of their values, read off the dataclasses, so a key added later is tested too."""

import dataclasses
from typing import get_type_hints

from config.schema import Config


def config_keys(of: type, cls: type = Config, prefix: str = "") -> list[str]:
    """Every `section.key` of the config whose value is of type `of`."""
    keys = []
    for f in dataclasses.fields(cls):
        kind = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            keys += config_keys(of, kind, f"{prefix}{f.name}.")
        elif kind is of:
            keys.append(f"{prefix}{f.name}")
    return keys
