"""The deployment's catalogue of models and versions, kept in Redis: how every web server learns
which models exist, which of their versions have live workers, which version is current, and
which queue serves each. Workers write it (with their heartbeats); web servers read it; the
rollout command (serving/rollout.py) pins and splits.

Keys, under the deployment name ``D`` (``--queue-name``), all in one hash slot (``{D:models}``):

- ``{D:models}``         hash ``<model>/<version>`` -> {"model": ModelInfo, "queue": name} JSON:
                         every version ever announced and the queue that serves it, kept with no
                         TTL, so web servers queue for a model scaled to zero
- ``{D:models}:live``    sorted set ``<model>/<version>`` -> latest heartbeat expiry (ms)
- ``{D:models}:pinned``  hash model -> the version pinned as current; unpinned, the current
                         version is the newest live one (the "latest" policy of Triton and TF Serving)
- ``{D:models}:canary``  hash model -> ``<version>:<percent>``: that share of the requests that
                         name no version go to that version while it is live

Each version's work has a queue of its own, ``QueueKeys(model_queue_name(D, model, version))``:
its own lanes, workers, processing lists and jobs, in a hash slot of its own. So workers of two
models (or two versions) never take each other's work, a dead worker's batch goes back to its
own version's lanes, and KEDA scales each version on its own lane.
"""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
import logging
import time
from dataclasses import dataclass, field
from typing import cast

import orjson
import redis
from redis.cluster import RedisCluster

from serving.queue.messages import MessageError, ModelInfo
from serving.settings import MODEL_NAME, VERSION

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster


def model_queue_name(deployment: str, model: str, version: str) -> str:
    """The queue of one model version: ``D:model:version`` (its keys are ``{D:model:version}...``)."""
    return f"{deployment}:{model}:{version}"


def check_name(model: str) -> str:
    if not MODEL_NAME.fullmatch(model):
        raise ValueError(
            f"a model name is 1-64 letters, digits, '_' or '-', starting with a letter or digit: {model!r}"
        )
    return model


def check_version(version: str) -> str:
    if not VERSION.fullmatch(version):
        raise ValueError(f"a model version is a whole number from 1: {version!r}")
    return version


def newest(versions: set[str] | list[str]) -> str | None:
    return max(versions, key=int) if versions else None


@dataclass(frozen=True)
class Served:
    """One version of a model and the queue its workers take from."""

    model: ModelInfo
    queue: str


def _served(raw: bytes) -> Served:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise MessageError("a catalogue record is a JSON object")
    queue = data.get("queue")
    if not isinstance(queue, str) or not 0 < len(queue) <= 200 or "{" in queue or "}" in queue:
        raise MessageError("queue must be a queue name")
    return Served(ModelInfo.from_dict(data.get("model")), queue)


@dataclass(frozen=True)
class Canary:
    version: str
    percent: float  # 0-100


@dataclass(frozen=True)
class CatalogueState:
    """One reading of the catalogue."""

    versions: dict[str, dict[str, Served]] = field(default_factory=dict)  # model -> version -> served
    live: dict[str, set[str]] = field(default_factory=dict)  # model -> versions with a live worker
    pinned: dict[str, str] = field(default_factory=dict)
    canary: dict[str, Canary] = field(default_factory=dict)

    def models(self) -> list[str]:
        return sorted(self.versions)

    def is_live(self, model: str, version: str) -> bool:
        return version in self.live.get(model, set())

    def current(self, model: str) -> str | None:
        """The version that serves requests naming none: the pinned one, else the newest live
        one, else (all scaled to zero) the newest known one."""
        known = self.versions.get(model, {})
        pinned = self.pinned.get(model)
        if pinned in known:
            return pinned
        return newest(self.live.get(model, set())) or newest(list(known))


class Catalogue:
    """The catalogue of deployment ``deployment``, on a client of its Redis."""

    def __init__(self, client: Client, deployment: str):
        self.redis = client
        self.deployment = deployment
        tag = "{" + deployment + ":models}"
        self.key = tag
        self.live_key = f"{tag}:live"
        self.pinned_key = f"{tag}:pinned"
        self.canary_key = f"{tag}:canary"

    def all_keys(self) -> list[str]:
        return [self.key, self.live_key, self.pinned_key, self.canary_key]

    def queue_name(self, model: str, version: str) -> str:
        return model_queue_name(self.deployment, model, version)

    # Workers ---------------------------------------------------------------------
    def announce(self, model: ModelInfo, queue: str, ttl: float) -> None:
        """A worker of this version, taking from ``queue``, is alive for ``ttl`` seconds more."""
        member = f"{model.name}/{model.version}"
        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key, member, orjson.dumps({"model": model.as_dict(), "queue": queue}))
        pipe.zadd(self.live_key, {member: now_ms + int(ttl * 1000)}, gt=True)  # GT adds new members too
        pipe.execute()

    def retire(self, model: str, version: str) -> None:
        """The last worker of this version stopped: it is no longer live (its record stays)."""
        self.redis.zrem(self.live_key, f"{model}/{version}")

    # Readers ---------------------------------------------------------------------
    def read(self) -> CatalogueState:
        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key)
        pipe.zrangebyscore(self.live_key, now_ms, "+inf")
        pipe.hgetall(self.pinned_key)
        pipe.hgetall(self.canary_key)
        raw_models, raw_live, raw_pinned, raw_canary = pipe.execute()
        versions: dict[str, dict[str, Served]] = {}
        for member, raw in cast(dict[bytes, bytes], raw_models).items():
            try:
                served = _served(raw)
            except (orjson.JSONDecodeError, MessageError) as exc:
                log.warning("ignoring the catalogue record %r: %s", member, exc)
                continue
            versions.setdefault(served.model.name, {})[served.model.version] = served
        live: dict[str, set[str]] = {}
        for member in cast(list[bytes], raw_live):
            name, _, version = member.decode().partition("/")
            if version in versions.get(name, {}):
                live.setdefault(name, set()).add(version)
        pinned = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], raw_pinned).items()}
        canary = {}
        for raw_name, value in cast(dict[bytes, bytes], raw_canary).items():
            version, _, percent = value.decode().partition(":")
            try:
                canary[raw_name.decode()] = Canary(check_version(version), float(percent))
            except ValueError:
                log.warning("ignoring the canary record of %r: %r", raw_name, value)
        return CatalogueState(versions, live, pinned, canary)

    # The rollout command ------------------------------------------------------------
    def pin(self, model: str, version: str) -> None:
        self.redis.hset(self.pinned_key, model, version)

    def unpin(self, model: str) -> None:
        self.redis.hdel(self.pinned_key, model)

    def set_canary(self, model: str, version: str, percent: float) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"a canary share is a percentage from 0 to 100, not {percent:g}")
        self.redis.hset(self.canary_key, model, f"{version}:{percent:g}")

    def clear_canary(self, model: str) -> None:
        self.redis.hdel(self.canary_key, model)

    def forget(self, model: str, version: str) -> None:
        """Drop a version's record (a retired version that should no longer be listed)."""
        member = f"{model}/{version}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.key, member)
        pipe.zrem(self.live_key, member)
        pipe.execute()
