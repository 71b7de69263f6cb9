"""Each tenant's limits, enforced alike by every web server: the counters live in Redis and each
check is one Lua step (no read-then-write race between servers).

Keys, in the tenants' hash slot (``{D:tenants}``, serving/tenants/registry.py):

- ``{D:tenants}:bucket:<tenant>``  hash {tokens, at}: a token bucket of images, refilled at the
                                   tenant's rate up to its burst; Redis's own clock (TIME), so the
                                   web servers' clocks need not agree
- ``{D:tenants}:jobs:<tenant>``    sorted set job id -> deadline (ms): its open jobs

The cap on queued images is checked where the images are queued, in the queue's own scripts
(scripts.ENQUEUE and CREATE_JOB), so it is exact.
"""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from serving.tenants.registry import Client, Tenant

# Take ``cost`` tokens if the bucket has them.
# KEYS[1] the tenant's bucket; ARGV[1] rate (tokens/s), ARGV[2] bucket size, ARGV[3] cost
# Returns {1, 0} when taken, {0, ms until there are enough}, or {0, -1} when cost > size.
_TAKE_TOKENS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate, size, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if cost > size then return {0, -1} end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or size, tonumber(state[2]) or now
tokens = math.min(size, tokens + math.max(0, now - at) * rate)
if tokens < cost then return {0, math.ceil((cost - tokens) / rate * 1000)} end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(size / rate * 1000) + 1000)
return {1, 0}
"""

# Open a job if the tenant has fewer than its cap open; jobs past their deadline, and those the
# caller found ended, no longer count.
# KEYS[1] the tenant's open jobs; ARGV[1] the cap, ARGV[2] the job id, ARGV[3] its deadline (ms),
# ARGV[4..] ids of jobs that have ended
# Returns 1 when opened, 0 when the cap is reached.
_OPEN_JOB = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 4, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local keep = tonumber(ARGV[3]) - now
if keep > redis.call('PTTL', KEYS[1]) then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
"""


@dataclass(frozen=True)
class Refusal:
    """Why a tenant's request is refused (429), and when to try again."""

    reason: str  # rate | queued | jobs: the metrics label
    message: str
    retry_after: int  # whole seconds, at least 1


class TenantLimits:
    def __init__(self, client: Client, tenants_key: str):
        self.redis = client
        self.prefix = tenants_key
        self._take_tokens = client.register_script(_TAKE_TOKENS)
        self._open_job = client.register_script(_OPEN_JOB)

    def bucket_key(self, tenant: str) -> str:
        return f"{self.prefix}:bucket:{tenant}"

    def jobs_key(self, tenant: str) -> str:
        return f"{self.prefix}:jobs:{tenant}"

    def charge(self, tenant: Tenant, images: int) -> Refusal | None:
        """Take ``images`` from the tenant's rate; a Refusal when it has not got them."""
        limits = tenant.limits
        if not limits.images_per_second:
            return None
        size = limits.bucket_size
        taken, wait_ms = cast(
            list[int],
            self._take_tokens(
                keys=[self.bucket_key(tenant.name)], args=[limits.images_per_second, size, images]
            ),
        )
        if taken:
            return None
        if wait_ms < 0:
            return Refusal(
                "rate",
                f"A request of {images} images is more than the {size:g} this key may send at once.",
                math.ceil(size / limits.images_per_second),
            )
        return Refusal(
            "rate",
            f"Too many images: this key may send {limits.images_per_second:g} per second "
            f"(bursts of {size:g}). Try again in {wait_ms / 1000:.1f} s.",
            max(1, math.ceil(wait_ms / 1000)),
        )

    def open_job(
        self, tenant: Tenant, job_id: str, deadline: float, has_ended: Callable[[str], bool]
    ) -> Refusal | None:
        """Count a new job against the tenant's open jobs; a Refusal when it has its cap open.
        ``has_ended(job_id)`` is asked about its other jobs only when the cap seems reached."""
        cap = tenant.limits.max_jobs
        if not cap:
            return None
        key = self.jobs_key(tenant.name)
        args: list[int | str] = [cap, job_id, int(deadline * 1000)]
        if self._open_job(keys=[key], args=args):
            return None
        open_ids = [raw.decode() for raw in cast(Sequence[bytes], self.redis.zrange(key, 0, -1))]
        ended = [other for other in open_ids if has_ended(other)]
        if ended and self._open_job(keys=[key], args=[*args, *ended]):
            return None
        return Refusal("jobs", f"This key may have {cap} jobs open at once; wait for one to end.", 5)

    def close_job(self, tenant: Tenant, job_id: str) -> None:
        """The job ended early (cancelled, or never queued): it no longer counts."""
        if tenant.limits.max_jobs:
            self.redis.zrem(self.jobs_key(tenant.name), job_id)
