"""Checkpoints and weights: the one owner of checkpoint.dir (folder.py), folders that load into any layout
(store.py), a run's folders probed and locked (run_folder.py), shareable safetensors weights (weights.py), and
loading a trained net (trained.py)."""
