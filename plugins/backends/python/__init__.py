"""Triton's Python backend: ``model.py`` models run unchanged in worker processes."""
