"""Images out: the tools that write packs (`python -m packs.prepare`, `python -m packs.fashion_mnist`), the
parallel writer they share (packing.py, assembly.py), and the embedded data's cache a run writes on first use."""
