"""What spans processes: the layout (replicas x tower processes), the collectives each written once,
the towers' exchange, the pipelined step, the shared feed; and the entry point torchrun starts."""
