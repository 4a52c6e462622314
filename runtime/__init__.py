"""Torch-free helpers of the runtime engine (inference.py): sources, post-processing, video."""
