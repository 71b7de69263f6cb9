"""API keys (``--auth keys``): every request but the health probes, /metrics, the OpenAPI
document and the upload page's HTML must carry a key of a registered tenant, as
``Authorization: Bearer <key>`` (what tritonclient sends with ``headers=``) or ``X-API-Key``.
The request's tenant is then ``g.tenant``; with ``--auth none`` it is the one open tenant, with
no limits.

A key is looked up by its SHA-256 (serving/tenants/registry.py), and what Redis said is kept for
KEY_CACHE_SECONDS per web process, unknown keys included: a revoked key stops working on every
server within that time, and a flood of bad keys costs Redis one call per key per period.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, g, request

from serving.queue.keys import DEFAULT_TENANT
from serving.tenants.limits import Refusal, TenantLimits
from serving.tenants.registry import Limits, Tenant, TenantRegistry, digest
from serving.web.metrics import AUTH_FAILURES, TENANT_REQUESTS
from serving.web.responses import ApiError, TooManyRequests

KEY_CACHE_SECONDS = 2.0
KEY_CACHE_ENTRIES = 10_000  # beyond this many distinct keys the cache starts over
OPEN_TENANT = Tenant(DEFAULT_TENANT, Limits())
# Endpoints anyone may call: probes must work without secrets, and the page's HTML holds none.
OPEN_ENDPOINTS = frozenset(
    {"api.healthz", "api.readyz", "api.openapi", "v2.live", "v2.ready", "metrics", "static", "ui.index"}
)
REALM = 'Bearer realm="keras-server"'


class Unauthorized(ApiError):
    status = 401

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"WWW-Authenticate": REALM}


class Forbidden(ApiError):
    status = 403


class KeyCache:
    """Key digest -> tenant (None: unknown), as Redis said at most KEY_CACHE_SECONDS ago."""

    def __init__(self, registry: TenantRegistry):
        self.registry = registry
        self._known: dict[str, tuple[Tenant | None, float]] = {}
        self._lock = threading.Lock()

    def tenant(self, key: str) -> Tenant | None:
        hashed, now = digest(key), time.monotonic()
        found = self._known.get(hashed)
        if found and found[1] > now:
            return found[0]
        tenant = self.registry.lookup(key)
        with self._lock:
            if len(self._known) >= KEY_CACHE_ENTRIES:
                self._known.clear()
            self._known[hashed] = (tenant, now + KEY_CACHE_SECONDS)
        return tenant


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if request.headers.get("X-API-Key"):
        return request.headers["X-API-Key"]
    if request.endpoint == "ui.classify_form":  # the page's form, for browsers without JavaScript
        return request.form.get("api_key") or None
    return None


def current_tenant() -> Tenant:
    """The tenant of the request being served (the open tenant outside a request or with auth off)."""
    tenant: Tenant = g.get("tenant", OPEN_TENANT)
    return tenant


def check_model(model: str) -> None:
    """403 unless the request's tenant may use ``model``."""
    tenant = current_tenant()
    if not tenant.limits.allows_model(model):
        TENANT_REQUESTS.labels(tenant.name, "forbidden").inc()
        raise Forbidden(f"This key may not use model {model!r}.")


def visible_models(models: list[str]) -> list[str]:
    """The models the request's key may use: a listing shows no others."""
    limits = current_tenant().limits
    return [model for model in models if limits.allows_model(model)]


def register_auth(app: Flask, keys: KeyCache | None) -> None:
    """Check the key of every request that needs one (``keys`` None: --auth none)."""
    if keys is None:
        return

    @app.before_request
    def authenticate() -> None:
        if request.endpoint in OPEN_ENDPOINTS:
            return
        key = presented_key()
        if not key:
            AUTH_FAILURES.labels("missing").inc()
            raise Unauthorized("An API key is required: send it as 'Authorization: Bearer <key>'.")
        tenant = keys.tenant(key)
        if tenant is None:
            AUTH_FAILURES.labels("invalid").inc()
            raise Unauthorized("The API key is not valid (unknown or revoked).")
        g.tenant = tenant


def refuse(tenant: Tenant, refusal: Refusal) -> TooManyRequests:
    """The 429 for a tenant over a limit, counted."""
    TENANT_REQUESTS.labels(tenant.name, refusal.reason).inc()
    return TooManyRequests(refusal.message, refusal.retry_after)


def charge(limits: TenantLimits, images: int) -> Tenant:
    """The request's tenant, once its images are taken from its rate (429 when it has not got them)."""
    tenant = current_tenant()
    refusal = limits.charge(tenant, images)
    if refusal:
        raise refuse(tenant, refusal)
    TENANT_REQUESTS.labels(tenant.name, "accepted").inc()
    return tenant
