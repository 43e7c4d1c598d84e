"""The network: plain modules, no torch.distributed."""
