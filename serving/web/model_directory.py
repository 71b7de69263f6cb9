"""Which models and versions this deployment serves, as the web tier sees them: read from the
catalogue the workers keep in Redis (serving/queue/catalogue.py), and where a request for a
model goes (``route``). The web tier needs no model code: a model's input size, resize mode,
classes and versions all come from its workers' records."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from serving.queue import RedisQueue
from serving.queue.catalogue import Catalogue, CatalogueState
from serving.queue.messages import BULK, INTERACTIVE, ModelInfo
from serving.web.responses import ApiError, BadRequest, ServiceUnavailable

NO_WORKER = "No model worker is running; try again shortly."
MISS_REFRESH_SECONDS = 0.01  # a read is one pipelined round trip: 100 a second at most per process


class UnknownModel(ApiError):
    status = 404


@dataclass(frozen=True)
class Route:
    """Where one request goes: the model version that will compute it and that version's queue."""

    model: ModelInfo
    queue: RedisQueue
    live: bool  # a worker of this version is alive now (else its images wait for one: scale from zero)


def _listed(names: list[str]) -> str:
    return ", ".join(names) or "none"


def _remembering(read: CatalogueState, before: CatalogueState) -> CatalogueState:
    """The catalogue as read; but an empty one (a Redis restarted without its data, before the
    workers beat again) keeps the versions read before, none of them live, so their requests
    queue for the workers rather than fail."""
    if read.versions or not before.versions:
        return read
    return CatalogueState(before.versions, read.live, read.pinned, read.canary)


class ModelDirectory:
    """The catalogue, read from Redis at most once per ``refresh_seconds`` (every request needs
    its model's input size; a read per request would cost more than the request). A pin, a
    canary or a new version therefore reaches every web server within ``refresh_seconds``."""

    def __init__(
        self,
        queue: RedisQueue,
        deployment: str,
        default_model: str | None = None,
        refresh_seconds: float = 1.0,
    ):
        self.base = queue  # the clients every model version's queue shares
        self.catalogue = Catalogue(queue.redis, deployment)
        self.default_model = default_model
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._state = CatalogueState()
        self._read_at = float("-inf")
        self._queues: dict[str, RedisQueue] = {}

    def state(self, fresh: bool = False) -> CatalogueState:
        with self._lock:
            if fresh or time.monotonic() - self._read_at > self.refresh_seconds:
                self._state = _remembering(self.catalogue.read(), self._state)
                self._read_at = time.monotonic()
            return self._state

    def state_knowing(self, model: str | None) -> CatalogueState:
        """The cached state, read again when it lacks ``model`` (or every model): a worker that
        just started is found at once, not a refresh later. Misses re-read at most every
        MISS_REFRESH_SECONDS, so a flood of unknown names costs Redis little."""
        state = self.state()
        missing = not state.versions if model is None else model not in state.versions
        if missing and time.monotonic() - self._read_at > MISS_REFRESH_SECONDS:
            state = self.state(fresh=True)
        return state

    def queue(self, name: str) -> RedisQueue:
        """The queue named ``name`` on the shared clients (one per served version: bounded)."""
        with self._lock:
            if name not in self._queues:
                self._queues[name] = self.base.sibling(name)
            return self._queues[name]

    def default_name(self, state: CatalogueState | None = None) -> str:
        """The model for requests that name none: --default-model, else the only one served."""
        state = state or self.state()
        if self.default_model:
            if self.default_model not in state.versions:
                raise ServiceUnavailable(
                    f"No worker has served the default model {self.default_model!r} yet."
                )
            return self.default_model
        models = state.models()
        if not models:
            raise ServiceUnavailable(NO_WORKER)
        if len(models) > 1:
            raise BadRequest(f"Name a model (?model=NAME): this server serves {_listed(models)}.")
        return models[0]

    def route(self, model: str | None = None, version: str | None = None) -> Route:
        """Where a request for ``model`` (None: the default) at ``version`` (None: its current
        version, or the canary's share) goes. 404 for a model or version never served; 503 for a
        version that is neither live nor current (nothing would ever take its images)."""
        state = self.state_knowing(model or self.default_model)
        name = model or self.default_name(state)
        versions = state.versions.get(name)
        if versions is None:
            raise UnknownModel(f"Unknown model {name!r}; this server serves: {_listed(state.models())}.")
        current = state.current(name)
        if version is not None:
            if version not in versions:
                known = _listed(sorted(versions, key=int))
                raise UnknownModel(f"Model {name!r} has no version {version!r}; it has: {known}.")
            if version != current and not state.is_live(name, version):
                raise ServiceUnavailable(
                    f"No worker serves version {version} of {name!r} now; its current version is {current}."
                )
            chosen = version
        else:
            chosen = current or max(versions, key=int)
            canary = state.canary.get(name)
            if (
                canary
                and canary.version != chosen
                and state.is_live(name, canary.version)
                and random.random() * 100 < canary.percent
            ):
                chosen = canary.version
        served = versions[chosen]
        return Route(served.model, self.queue(served.queue), state.is_live(name, chosen))

    def model(self) -> ModelInfo:
        """The default model's current version (what a page or document describes)."""
        return self.route().model


def ready_state(
    directory: ModelDirectory, model: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """What a readiness probe answers, read fresh: every model's versions with their live workers
    and queue depths. Ready (else 503) when Redis answers and a worker is alive for ``model``'s
    current version (or ``version``), or with no model named, for some model's current version."""
    queue = directory.base
    if version is not None and model is None:
        raise BadRequest("Name the model whose version to check: ?model=NAME&version=V.")
    try:
        state = directory.state(fresh=True)
        models: dict[str, Any] = {}
        for name in state.models():
            current = state.current(name)
            versions = {}
            for number, served in sorted(state.versions[name].items(), key=lambda item: int(item[0])):
                version_queue = directory.queue(served.queue)
                workers = len(version_queue.live_workers()) if state.is_live(name, number) else 0
                versions[number] = {
                    "workers": workers,
                    "queue_depth": version_queue.depth(INTERACTIVE),
                    "job_queue_depth": version_queue.depth(BULK),
                    "model": served.model.as_dict(),
                }
            models[name] = {
                "current": current,
                "ready": bool(current and versions[current]["workers"]),
                "versions": versions,
            }
        primary = queue.primary()
    except redis.RedisError:
        raise ServiceUnavailable("Redis is unreachable.") from None
    if model is not None:
        if model not in models:
            raise UnknownModel(f"Unknown model {model!r}; this server serves: {_listed(state.models())}.")
        asked = version or models[model]["current"]
        if asked not in models[model]["versions"]:
            raise UnknownModel(f"Model {model!r} has no version {asked!r}.")
        if not models[model]["versions"][asked]["workers"]:
            raise ServiceUnavailable(
                f"No model worker of {model!r} version {asked} has sent a heartbeat recently."
            )
    elif not any(entry["ready"] for entry in models.values()):
        raise ServiceUnavailable("No model worker has sent a heartbeat recently.")
    ready_models = [name for name, entry in models.items() if entry["ready"]]
    shown = (
        model or (directory.default_model if directory.default_model in models else None) or ready_models[0]
    )
    current = models[shown]["versions"][version or models[shown]["current"]]
    # Which primary this process talks to, how it found it, and how many times it moved.
    redis_state = {"primary": primary, "via": queue.watch.how, "primary_changes": queue.watch.changes}
    return {
        "ready": True,
        "workers": sum(v["workers"] for entry in models.values() for v in entry["versions"].values()),
        "queue_depth": sum(v["queue_depth"] for entry in models.values() for v in entry["versions"].values()),
        "model": current["model"],
        "models": models,
        "redis": redis_state,
    }
