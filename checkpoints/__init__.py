"""Checkpoints and weights: folders that load into any layout (store.py), a run's ownership of its
folders (run_folder.py), shareable safetensors weights (weights.py), and loading a trained net (trained.py)."""
