"""Tenants, their limits and their API keys, in Redis, shared by every web server.

Keys, under the deployment name ``D`` (``--queue-name``), all in one hash slot (``{D:tenants}``):

- ``{D:tenants}``       hash tenant -> its limits (Limits, JSON)
- ``{D:tenants}:keys``  hash SHA-256 of an API key (hex) -> {"tenant", "id", "created"} JSON

A key is 32 random bytes (``secrets``), so a plain SHA-256 is the right hash: there is nothing
to brute-force that a slow hash would protect (OWASP's advice for high-entropy API keys). The
key itself is printed once, when it is made, and never stored, logged or counted anywhere; its
``id`` (the first 12 hex digits of its hash) names it in ``list`` and ``revoke``.
"""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import orjson
import redis
from redis.cluster import RedisCluster

Client = redis.Redis | RedisCluster

TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_PREFIX = "ks_"  # tells a key from other secrets in a config file or a leak scanner
KEY_ID_DIGITS = 12

# One lookup, both hashes: the key's record, then its tenant's limits (None for an unknown key).
# KEYS[1] the keys hash, KEYS[2] the tenants hash; ARGV[1] the key's digest
_LOOKUP = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return false end
local tenant = cjson.decode(record)['tenant']
return {record, redis.call('HGET', KEYS[2], tenant) or false}
"""


@dataclass(frozen=True)
class Limits:
    """What a tenant may do; 0 means no limit."""

    images_per_second: float = 0.0  # sustained rate of images sent (each image of a request counts)
    burst: int = 0  # images it may send at once above the rate (default: a second's worth)
    max_queued: int = 0  # images it may have waiting in one model version's lanes
    max_jobs: int = 0  # jobs it may have open (queued or running) at once
    models: tuple[str, ...] = ()  # the models it may use; empty: all

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    @property
    def bucket_size(self) -> float:
        return float(self.burst or max(1.0, self.images_per_second))

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Limits:
        fields = orjson.loads(raw)
        fields["models"] = tuple(fields.get("models") or ())
        return cls(**{name: value for name, value in fields.items() if name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: Limits


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.fullmatch(name):
        raise ValueError(
            "a tenant name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit: {name!r}"
        )
    return name


class TenantRegistry:
    def __init__(self, client: Client, deployment: str):
        self.redis = client
        self.tenants_key = "{" + deployment + ":tenants}"
        self.keys_key = self.tenants_key + ":keys"
        self._lookup = client.register_script(_LOOKUP)

    def add(self, name: str, limits: Limits) -> str:
        """Create the tenant (or set its limits) and make it a new key, returned once. Its other
        keys keep working: add a key, roll it out, then revoke the old one."""
        check_tenant_name(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        hashed = digest(key)
        record = {"tenant": name, "id": hashed[:KEY_ID_DIGITS], "created": time.time()}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.tenants_key, name, limits.to_json())
        pipe.hset(self.keys_key, hashed, orjson.dumps(record))
        pipe.execute()
        return key

    def set_limits(self, name: str, limits: Limits) -> bool:
        """Change a tenant's limits (every web server sees them within seconds). False: no such tenant."""
        if not self.redis.hexists(self.tenants_key, name):
            return False
        self.redis.hset(self.tenants_key, name, limits.to_json())
        return True

    def revoke(self, name: str, key_id: str | None = None) -> int:
        """Revoke one key of the tenant (by its id), or all of them and the tenant itself.
        Returns how many keys were revoked."""
        hashes = [
            hashed
            for hashed, record in self._key_records().items()
            if record["tenant"] == name and (key_id is None or record["id"] == key_id)
        ]
        pipe = self.redis.pipeline(transaction=True)
        if hashes:
            pipe.hdel(self.keys_key, *hashes)
        if key_id is None:
            pipe.hdel(self.tenants_key, name)
        pipe.execute()
        return len(hashes)

    def tenants(self) -> dict[str, tuple[Limits, list[dict[str, Any]]]]:
        """Every tenant: its limits and its keys' records (ids, never keys)."""
        limits = {
            name.decode(): Limits.from_json(raw)
            for name, raw in cast(dict[bytes, bytes], self.redis.hgetall(self.tenants_key)).items()
        }
        keys: dict[str, list[dict[str, Any]]] = {name: [] for name in limits}
        for record in self._key_records().values():
            keys.setdefault(record["tenant"], []).append(record)
        return {name: (limits.get(name, Limits()), keys[name]) for name in sorted(keys)}

    def lookup(self, key: str) -> Tenant | None:
        """The tenant a key belongs to, or None for a key that is unknown or revoked."""
        hashed = digest(key)
        found = self._lookup(keys=[self.keys_key, self.tenants_key], args=[hashed])
        if not found:
            return None
        record, limits = cast(list[bytes], found)
        fields = orjson.loads(record)
        # The hash was the lookup's index; comparing it again in constant time costs nothing
        # and keeps the check itself free of timing differences.
        if not hmac.compare_digest(fields["id"], hashed[:KEY_ID_DIGITS]) or not limits:
            return None
        return Tenant(fields["tenant"], Limits.from_json(limits))

    def _key_records(self) -> dict[str, dict[str, Any]]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.keys_key))
        return {hashed.decode(): orjson.loads(record) for hashed, record in raw.items()}

    def all_keys(self) -> list[str]:
        return [self.tenants_key, self.keys_key]
