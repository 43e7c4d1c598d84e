"""The towers' weights as one grouped network, in the layout Caffe's bvlc_alexnet uses.

conv2, conv4 and conv5 become `groups=2` convolutions whose weights stack the two
towers' kernels; conv1, conv3 and the FC layers become whole layers. The result
loads into any plain grouped AlexNet (Caffe names: conv1..conv5, fc6..fc8).
"""

import torch

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def grouped_state_dict(towers_state: dict[str, torch.Tensor], towers: int = 2) -> dict[str, torch.Tensor]:
    """Merge `towers.<i>.<layer>.<param>` entries of all towers into Caffe-named whole layers.

    Output kernels of every layer but FC8 are stacked tower after tower, which is the
    channel order the exchange produces. FC8 was split by input, so its weights are
    joined along the input dimension and its bias is tower 0's.
    """
    out: dict[str, torch.Tensor] = {}
    for layer in LAYERS:
        weights = [towers_state[f"towers.{t}.{layer}.weight"] for t in range(towers)]
        out[f"{layer}.weight"] = torch.cat(weights, dim=1 if layer == "fc8" else 0)
        biases = [towers_state[f"towers.{t}.{layer}.bias"] for t in range(towers) if layer != "fc8" or t == 0]
        out[f"{layer}.bias"] = torch.cat(biases)
    return out
