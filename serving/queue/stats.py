"""The deployment-wide batch stats hash (``QueueKeys.stats``): what workers write and /metrics
reads. Each histogram is kept as one counter per (non-cumulative) bucket, ``<prefix>:<bound>``,
plus ``<prefix>_sum``; job ends are ``jobs:<status>``."""

from __future__ import annotations

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def bucket_field(prefix: str, bounds: tuple[float, ...], value: float) -> str:
    """The hash field of the one (non-cumulative) bucket ``value`` falls in."""
    for bound in bounds:
        if value <= bound:
            return f"{prefix}:{bound}"
    return f"{prefix}:+Inf"
