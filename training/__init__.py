"""The training loop and its components: building a run (build.py), the loop (trainer.py), validation
(evaluation.py), logging (metrics.py), the paper's update (optimizer.py, csrc/) and schedule (plateau.py),
the speed switches (speed.py). The room's table in README.md lists every file."""
