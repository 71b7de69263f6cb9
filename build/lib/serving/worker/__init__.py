"""The model worker: the loop, the batching policy, batch stats, and its factory."""
