"""The training program where the mission's launch command names it:
`torchrun --nproc_per_node=2 -m distributed.main [--config F]... [section.key=value ...]`.

The program itself, its commands (train, config, describe, evaluate) and their checks, is programs/train.py:
it stands above everything it runs (training/, checkpoints/, distributed/), so this entry is the one import
that runs back up the house.
"""

import sys

from programs.train import main

if __name__ == "__main__":
    sys.exit(main())
