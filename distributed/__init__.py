"""Everything that spans processes: layout, exchange, training loop, checkpoints; and the entry point."""
