"""Redis dies under load: a Sentinel-managed primary, and a Cluster shard's primary, killed with
SIGKILL while 16 clients send interactive requests and jobs stream in (tests/failover.py). What
the README promises across a failover is asserted here: no wrong answer, no hung request, no
accepted job lost or answered twice, service back within seconds, nothing served from the old
primary when it returns."""

from __future__ import annotations

import re
import time

import pytest
import redis
import requests

from harness.redis_ha import ClusterHarness, SentinelHarness
from harness.redis_nodes import default_binaries
from serving.queue.connection import open_queue

from .failover import ClusterTopology, Deployment, Figures, SentinelTopology, run
from .support import messages_of

pytestmark = pytest.mark.slow  # starts six or more redis-servers, two web servers and two workers


def assert_the_promise(figures: Figures, back_within: float) -> None:
    assert figures.wrong == 0 and figures.duplicated == 0, figures.line()
    assert figures.hung == 0 and figures.other == 0, figures.line()
    assert figures.jobs_lost == 0 and figures.jobs_answered_twice == 0, figures.line()
    assert figures.jobs_accepted >= 10 and figures.answered >= 100, figures.line()
    assert figures.unavailable_seconds is not None and figures.unavailable_seconds <= back_within, (
        figures.line()
    )
    assert "written_to_old_while_primary=0" in figures.after_return, figures.line()
    assert " lost=0 duplicated=0 mixed_up=0" in figures.after_return, figures.line()


@pytest.mark.timeout(900)  # a whole deployment started and failed over: slow on a busy machine
def test_a_sentinel_failover_under_load_keeps_the_promise(tmp_path, colour_model):
    ha = SentinelHarness(replicas=2, sentinels=3, down_after_ms=1000, failover_timeout_ms=2000).start()
    deployment = None
    try:
        deployment = Deployment(SentinelTopology(ha), tmp_path, colour_model)
        figures = run(deployment)
        # Detection (1 s) + election and promotion (~1.5 s) + reconnecting; a loaded box adds some.
        assert_the_promise(figures, back_within=15)
        new_primary = f"127.0.0.1:{ha.primary().port}"
        for web in deployment.webs:
            ready = requests.get(web.url + "/readyz", timeout=5).json()["redis"]
            assert (
                ready["primary"] == new_primary
                and ready["via"] == "sentinel"
                and ready["primary_changes"] >= 1
            )
            metrics = requests.get(web.url + "/metrics", timeout=5).text
            assert re.search(r"^inference_redis_primary_changes_total [1-9]", metrics, re.M), metrics[-2000:]
        for name, log in deployment.logs().items():
            assert "Redis primary moved (sentinel): " in log and f"-> {new_primary}" in log, name
    finally:
        if deployment:
            deployment.stop()
        ha.stop()


@pytest.mark.timeout(900)  # a whole deployment started and failed over: slow on a busy machine
def test_a_cluster_shard_failover_under_load_keeps_the_promise(tmp_path, colour_model):
    cluster = ClusterHarness(primaries=3, replicas_per_primary=1, node_timeout_ms=1000).start()
    deployment = None
    try:
        deployment = Deployment(ClusterTopology(cluster), tmp_path, colour_model)
        figures = run(deployment)
        assert_the_promise(figures, back_within=15)
    finally:
        if deployment:
            deployment.stop()
        cluster.stop()


def test_a_sentinel_url_with_passwords_finds_the_primary_and_follows_it():
    """Passwords on the data nodes and on the sentinels, through the URL; after the primary dies
    the same client finds the new one and the message queued before the kill."""
    with SentinelHarness(
        replicas=1, sentinels=3, password="data-pw", sentinel_password="sentinel-pw", failover_timeout_ms=2000
    ) as ha:
        assert "sentinel_password=sentinel-pw" in ha.sentinel_url()
        queue = open_queue(ha.sentinel_url(), "pwq", call_timeout=1.0, longest_block=30)
        assert queue.min_replicas == 1 and queue.enqueue("r", [b"m"], max_length=10, keep_seconds=30)
        assert queue.primary() == f"127.0.0.1:{ha.primary().port}" and queue.watch.how == "sentinel"
        old = ha.kill_primary()
        new = ha.wait_for_failover(old, timeout=60)
        taken = None
        for _ in range(200):  # what the worker loop does: try again soon
            try:
                taken = queue.take("w", 1)
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        assert taken is not None and taken.interactive == [b"r:0"]  # the writes had reached the replica:
        assert messages_of(queue, taken.interactive) == [b"m"]  # the reference, and the message
        assert queue.primary() == f"127.0.0.1:{new.port}" and queue.watch.changes == 1
        queue.redis.close()


def test_a_tls_sentinel_url_reaches_the_primary_over_tls():
    """rediss+sentinel:// speaks TLS to the sentinels and to the data nodes (a redis-server built
    with TLS: HARNESS_REDIS=debian)."""
    if not default_binaries().has_tls():
        pytest.skip("this redis-server has no TLS (HARNESS_REDIS=debian runs Debian's, which has)")
    with SentinelHarness(replicas=1, sentinels=3, password="pw", tls=True) as ha:
        url = ha.sentinel_url()
        assert url.startswith("rediss+sentinel://")
        queue = open_queue(url, "tlsq", call_timeout=2.0, longest_block=5)
        assert queue.enqueue("r", [b"m"], max_length=10, keep_seconds=30)
        assert messages_of(queue, queue.take("w", 1).interactive) == [b"m"]
        assert queue.primary() == f"127.0.0.1:{ha.primary().port}"
        queue.redis.close()
