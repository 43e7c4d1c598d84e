"""Loading the config: YAML files layered in order, then `section.key=value` overrides, all checked; an
unknown or duplicate key, a wrong type, an impossible or unrepresentable value, or a file that is not YAML
text is a `ConfigError` naming the key. YAML aliases are refused (why: docs/ARCHITECTURE.md, "The command
line and user errors")."""

import dataclasses
import math
import os
import reprlib
from pathlib import Path
from typing import Any, Iterable, get_type_hints

import yaml

from config.errors import one_line, reading
from config.schema import Config, ConfigError
from files import Refused, read_capped

FLOAT32_MAX = 3.4028234663852886e38
"""Every float key meets float32 arithmetic (weights, pixels, the update): beyond this it is inf."""
INT64 = (-(2**63), 2**63 - 1)
"""YAML ints are unbounded; torch, numpy and the C below them take 64 bits."""
CONFIG_FILE_BYTES = 2**20
"""Largest config file read; config.yaml is a few KB."""

class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML whose mappings refuse a key given twice (PyYAML keeps the last silently), without aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML alias *{event.anchor} at {event.start_mark.line + 1}:{event.start_mark.column + 1}"
                              ": aliases are not allowed in a config (write the values out)")
        return super().compose_node(parent, index)


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            repeated = key in seen
        except TypeError:  # a list as a key: construct_mapping refuses it with a YAML error naming where
            continue
        if repeated:
            raise ConfigError(f"duplicate key {key!r} at {key_node.start_mark}")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


# Values in messages are cut short: YAML can hold a megabyte string, or aliases whose repr is exponential.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 4, 4, 60, 60, 40
_show = _SHORT.repr


def _coerce(value: Any, kind: type, key: str) -> Any:
    """A YAML value as the field's type; YAML 1.1 reads `5e-4` as a string, so floats accept that."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64[0] <= value <= INT64[1]:
                raise ConfigError(f"{key}={_show(value)}: out of range (64-bit integers only)")
            return value
    elif kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int past float64
            number = math.inf
        except ValueError:  # not a number: the error at the end
            number = None
        if number is not None:
            if not abs(number) <= FLOAT32_MAX:  # NaN passes the sections' `x <= 0` checks; 1e39 is inf in float32
                raise ConfigError(f"{key}={_show(value)}: must be a finite number of magnitude at most "
                                  f"{FLOAT32_MAX:.4g} (float32's largest)")
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads on/off/true/false as booleans: a switch's values
            return "on" if value else "off"
    raise ConfigError(f"{key}: expected {kind.__name__}, got {_show(value)}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key!s:.80} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a section (mapping), got {_show(value)}")
            kwargs[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix}{err}") from None


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_yaml(text: str, where: str) -> Any:
    """`text` as YAML through the safe loader (plain data only, no tags that build objects);
    every way it can fail is a ConfigError naming `where`, on one line: PyYAML's own messages take
    three to eight, and its constructors raise what Python does (a date of month 13, `!!int abc`,
    an int of 5,000 digits), which `reading` names like the rest."""
    with reading(where, ConfigError):
        try:
            return yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as err:
            raise ConfigError(f"{where} is not valid YAML: {_yaml_problem(err)}") from None
        except RecursionError:  # PyYAML composes nested collections recursively
            raise ConfigError(f"{where} nests collections too deeply to be a config") from None
        except ConfigError as err:  # a duplicate key or an alias
            raise ConfigError(f"{where}: {err}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message without the quoted source and caret it draws beneath it."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return one_line(err)
    mark = err.problem_mark or err.context_mark
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return one_line(" ".join(filter(None, [err.context, err.problem]))) + at


def _read_yaml(path: Path) -> dict:
    try:
        data = read_capped(path, CONFIG_FILE_BYTES, "a config file")
    except Refused as err:
        raise ConfigError(f"config file {err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (a binary file?): {err}") from None
    loaded = _parse_yaml(text, f"config file {path}")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return loaded


def _parse_override(text: str) -> dict:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    value = _parse_yaml(raw, f"the value of override {_show(text)}") if raw else ""
    nested: dict = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(layers: Iterable[str | os.PathLike | dict], overrides: Iterable[str] = ()) -> Config:
    """Layer the YAML files (or values already read, as a dict of sections) in order, then the
    `section.key=value` overrides, and check it all."""
    values: dict = {}
    for layer in layers:
        values = _merge(values, layer if isinstance(layer, dict) else _read_yaml(Path(layer)))
    seen_overrides: set[str] = set()
    for text in overrides:
        key = text.partition("=")[0]
        if key in seen_overrides:
            raise ConfigError(f"override {key} given twice")
        seen_overrides.add(key)
        values = _merge(values, _parse_override(text))
    return _build(Config, values, "")


