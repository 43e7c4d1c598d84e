"""The model config trained weights carry, checked against this run's: a checkpoint folder records it as
model.json, a weights file in its safetensors metadata, and both refuse another architecture the same way
(`ModelConfig.differences`: the shapes, and LRN, activation, pooling and input size; not init or dropout)."""

import dataclasses
import json

from config.errors import UserError
from config.model import ModelConfig


class UnreadableRecord(UserError):
    """The recorded model config is not a JSON object."""


def record(cfg: ModelConfig) -> str:
    """`cfg` as the JSON text a checkpoint or weights file records."""
    return json.dumps(dataclasses.asdict(cfg), indent=1) + "\n"


def parse_recorded(kind: str, path: object, recorded: str | bytes) -> dict:
    """`recorded`, the model config the `kind` ("checkpoint", "weights file") at `path` records, as a dict;
    UnreadableRecord if it is not a JSON object."""
    try:
        saved = json.loads(recorded)
    except (ValueError, RecursionError) as err:
        raise UnreadableRecord(f"{kind} {path}: its model config is not JSON ({err})") from None
    if not isinstance(saved, dict):
        raise UnreadableRecord(f"{kind} {path}: its model config is a {type(saved).__name__}, not a JSON object")
    return saved


def check_recorded(kind: str, path: object, recorded: str | bytes, cfg: ModelConfig) -> None:
    """Refuse (UserError) the `kind` at `path` if `recorded`, its model config as JSON, is another architecture
    than `cfg`, naming each key with both values (recorded -> this run); UnreadableRecord if `recorded` is not
    a JSON object."""
    differences = cfg.differences(parse_recorded(kind, path, recorded))
    if differences:
        raise UserError(f"{kind} {path} was trained with another model config ({kind} -> this run): "
                        + "; ".join(differences) + f"; give the {kind}'s values, or another {kind}")
