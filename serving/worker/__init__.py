"""The model worker: the loop, the batching policy, reading a batch's messages, its traces,
batch stats, and its factory."""
