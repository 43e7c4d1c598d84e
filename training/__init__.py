"""The training loop and its components: building a run (build.py), the loop (trainer.py), validation
(evaluation.py), logging (metrics.py), the paper's update and schedule (optimizer.py), the GPU switches
(fast_path.py)."""
