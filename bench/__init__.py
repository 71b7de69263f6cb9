"""Benchmark of the batching server against the model's own speed: ``python -m bench``."""
