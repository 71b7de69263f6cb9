"""API keys, per-tenant limits and job ownership (--auth keys), in-process on a real redis-server
with a real worker; and two gunicorn web servers enforcing one tenant's shared limit."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest
import redis

from serving.tenants.registry import KEY_ID_DIGITS, Limits, TenantRegistry, digest
from serving.web.auth import KEY_CACHE_SECONDS, OPEN_ENDPOINTS

from .support import ROOT, colour_image, wait_until


def multipart(*images: bytes) -> dict:
    return {
        "data": {"image": [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(images)]},
        "content_type": "multipart/form-data",
    }


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(colour_apps, redis_server):
    """An app with --auth keys and a worker; its registry."""
    app = colour_apps(auth="keys")
    registry = TenantRegistry(redis.Redis.from_url(redis_server.url), app.config["QUEUE_NAME"])
    return app, registry


def test_every_route_but_the_open_ones_needs_a_valid_key(keyed):
    app, registry = keyed
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        path = rule.rule.replace("<name>", "colour").replace("<version>", "1")
        path = path.replace("<job_id>", "colour.1." + "0" * 32).replace("<path:filename>", "app.js")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for headers in (
                {},
                bearer("ks_not-a-key"),
                {"X-API-Key": "ks_not-a-key"},
                {"Authorization": "Basic eDp5"},
            ):
                response = client.open(path, method=method, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.data[:200])
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "key" in response.get_json()["error"] and b"ks_not-a-key" not in response.data
                checked += 1
    assert checked >= 40
    for path in ("/healthz", "/readyz", "/v2/health/live", "/metrics", "/openapi.json", "/"):
        assert client.get(path).status_code == 200, path


def test_a_valid_key_is_served_and_a_revoked_one_stops_within_seconds(keyed):
    app, registry = keyed
    client = app.test_client()
    key = registry.add("revokee", Limits())
    other = registry.add("revokee", Limits())  # a second key: rotation
    assert client.post("/predict", headers=bearer(key), **multipart(colour_image("red"))).status_code == 200
    assert (
        client.post("/predict", headers={"X-API-Key": other}, **multipart(colour_image("red"))).status_code
        == 200
    )
    ids = [record["id"] for record in registry.tenants()["revokee"][1]]
    assert sorted(ids) == sorted(key_id(k) for k in (key, other))
    revoked_at = time.monotonic()
    assert registry.revoke("revokee", key_id(key)) == 1
    wait_until(
        lambda: client.get("/models", headers=bearer(key)).status_code == 401,
        KEY_CACHE_SECONDS + 3,
        "the revoked key to be refused",
    )
    assert time.monotonic() - revoked_at < KEY_CACHE_SECONDS + 3
    assert client.get("/models", headers=bearer(other)).status_code == 200  # the other key still works


def key_id(key: str) -> str:
    return digest(key)[:KEY_ID_DIGITS]


def test_a_model_the_tenant_may_not_use_is_403(keyed):
    app, registry = keyed
    client = app.test_client()
    key = registry.add("narrow", Limits(models=("documents",)))
    response = client.post("/predict", headers=bearer(key), **multipart(colour_image("red")))
    assert response.status_code == 403 and "colour" in response.json["error"]
    assert client.get("/v2/models/colour", headers=bearer(key)).status_code == 403
    assert client.get("/models", headers=bearer(key)).json["models"] == []  # listings show it no others
    assert client.post("/v2/repository/index", headers=bearer(key)).json == []


def test_the_rate_limit_is_429_with_retry_after_and_refills(keyed):
    app, registry = keyed
    client = app.test_client()
    key = registry.add("metered", Limits(images_per_second=1, burst=3))
    statuses = [
        client.post("/predict", headers=bearer(key), **multipart(colour_image("blue"))).status_code
        for _ in range(5)
    ]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
    refused = client.post("/predict", headers=bearer(key), **multipart(colour_image("blue")))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "per second" in refused.json["error"]
    time.sleep(1.2)  # the bucket refills at one image a second
    assert client.post("/predict", headers=bearer(key), **multipart(colour_image("blue"))).status_code == 200
    too_big = client.post("/predict", headers=bearer(key), **multipart(*[colour_image("red")] * 4))
    assert too_big.status_code == 429 and "at once" in too_big.json["error"]
    metrics = client.get("/metrics").text
    assert 'inference_tenant_requests_total{outcome="rate",tenant="metered"}' in metrics
    assert key not in metrics


def test_another_tenants_job_is_a_404_and_stays_untouched(keyed):
    app, registry = keyed
    client = app.test_client()
    owner, intruder = registry.add("owner", Limits()), registry.add("intruder", Limits())
    job_id = client.post("/jobs", headers=bearer(owner), **multipart(colour_image("green"))).json["id"]
    for method, path in (("GET", ""), ("GET", "?wait=1"), ("GET", "/events"), ("DELETE", "")):
        response = client.open(f"/jobs/{job_id}{path}", method=method, headers=bearer(intruder))
        assert response.status_code == 404, (method, path)
        assert "green" not in response.text
    body = client.get(f"/jobs/{job_id}?wait=10", headers=bearer(owner)).json
    assert body["status"] == "done" and body["predictions"][0]["label"] == "green"
    assert client.delete(f"/jobs/{job_id}", headers=bearer(owner)).json["status"] == "deleted"


def test_open_jobs_and_queued_images_are_capped_per_tenant(colour_apps, redis_server):
    app = colour_apps(worker=False, auth="keys")
    worker = app.config["START_WORKER"]()  # it announces the model, then leaves: jobs stay open
    wait_until(lambda: app.test_client().get("/readyz").status_code == 200, 30, "the worker's heartbeat")
    worker.stop()
    wait_until(lambda: app.test_client().get("/readyz").status_code == 503, 30, "the worker to leave")
    registry = TenantRegistry(redis.Redis.from_url(redis_server.url), app.config["QUEUE_NAME"])
    client = app.test_client()
    key = registry.add("capped", Limits(max_jobs=2, max_queued=3))
    first = client.post("/jobs", headers=bearer(key), **multipart(colour_image("red"), colour_image("red")))
    assert first.status_code == 202
    over_queue = client.post(
        "/jobs", headers=bearer(key), **multipart(colour_image("red"), colour_image("red"))
    )
    assert over_queue.status_code == 429 and "queued" in over_queue.json["error"]
    second = client.post("/jobs", headers=bearer(key), **multipart(colour_image("red")))
    assert second.status_code == 202
    third = client.post("/jobs", headers=bearer(key), **multipart(colour_image("red")))
    assert third.status_code == 429 and "jobs open" in third.json["error"]
    assert int(third.headers["Retry-After"]) >= 1
    assert client.delete(f"/jobs/{first.json['id']}", headers=bearer(key)).status_code == 200
    assert client.post("/jobs", headers=bearer(key), **multipart(colour_image("red"))).status_code == 202


def test_the_command_adds_lists_and_revokes_and_never_shows_a_stored_key(redis_server):
    def run(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "serving.tenants",
                "--redis-url",
                redis_server.url,
                "--queue-name",
                "cliq",
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = run("add", "cli-tenant", "--images-per-second", "5", "--max-jobs", "2", "--models", "colour")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("ks_") and len(key) > 40
    listed = run("list")
    assert "cli-tenant" in listed.stdout and key not in listed.stdout and '"max_jobs": 2' in listed.stdout
    stored = redis.Redis.from_url(redis_server.url)
    assert not any(key.encode() in value for value in stored.hgetall("{cliq:tenants}:keys").values())
    assert TenantRegistry(stored, "cliq").lookup(key).limits.models == ("colour",)
    assert run("add", "bad name!").returncode == 2
    assert run("revoke", "cli-tenant").returncode == 0
    assert TenantRegistry(stored, "cliq").lookup(key) is None


def test_the_openapi_document_says_which_routes_need_a_key(keyed):
    app, _ = keyed
    document = app.test_client().get("/openapi.json").json
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["security"] == [{"apiKey": []}]
    predict = document["paths"]["/predict"]["post"]["responses"]
    assert {"401", "403", "429"} <= set(predict) and "Retry-After" in predict["429"]["headers"]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in app.test_client().get("/openapi.json").json["paths"]["/jobs"]["post"]
