"""The trained run's exported weights file rewritten for the tests of what a hostile or odd one does."""

from safetensors import safe_open
from safetensors.torch import save_file


def rewritten(exported, target, change) -> object:
    """`target`: the export's tensors after `change` (a function of the dict of them), with its metadata."""
    with safe_open(exported, framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    change(tensors)
    save_file(tensors, target, metadata=metadata)
    return target
