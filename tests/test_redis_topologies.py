"""Fast checks that the queue can live on a Redis Cluster and behind Sentinel: one hash slot
per queue by construction, no keyspace scans, every script on declared keys only, and the URLs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from redis.crc import key_slot

from serving.queue import scripts
from serving.queue.connection import is_cluster_url, is_replicated_url, parse_cluster_url
from serving.queue.keys import QueueKeys
from serving.queue.messages import BULK, INTERACTIVE
from serving.queue.sentinel import is_sentinel_url, parse_sentinel_url

from .support import ROOT


def every_key(keys: QueueKeys) -> list[str]:
    ids = ("r1", "some-other-id", "")
    return [
        *keys.all_fixed(),
        *(keys.waiting(i) for i in ids),
        *(keys.result(i) for i in ids),
        *(keys.processing(i, lane) for i in ids for lane in (INTERACTIVE, BULK)),
        *(keys.heartbeat(i) for i in ids),
        *(key for i in ids for key in keys.job_keys(i)),
        *every_named_key(keys, ids),
    ]


def every_named_key(keys: QueueKeys, ids) -> list[str]:
    """What every public method of QueueKeys builds for these ids, found by looking, so that a
    key method added later is checked too."""
    import inspect

    found = []
    for name, method in inspect.getmembers(keys, inspect.ismethod):
        if name.startswith("_"):
            continue
        required = [p.name for p in inspect.signature(method).parameters.values() if p.default is p.empty]
        values = (INTERACTIVE, BULK) if required == ["lane"] else ids
        for value in values:
            built = method(*([value] * len(required)))
            found += built if isinstance(built, list) else [built]
    return found


@pytest.mark.parametrize("name", ["image_queue", "q", "model-a:v1", "lane x"])
def test_every_key_of_a_queue_is_in_one_hash_slot(name):
    keys = QueueKeys(name)
    slots = {key_slot(key.encode()) for key in every_key(keys)}
    assert slots == {key_slot(name.encode())}
    assert keys.lane(INTERACTIVE) == "{" + name + "}" and keys.lane(BULK) == "{" + name + "}:bulk"


def test_two_queues_can_live_on_different_slots():
    assert key_slot(QueueKeys("model-a").tag.encode()) != key_slot(QueueKeys("model-b").tag.encode())


def test_a_queue_name_with_braces_is_refused():
    with pytest.raises(ValueError, match="braces"):
        QueueKeys("{a}")


def test_no_operation_of_the_queue_scans_the_keyspace():
    for path in (ROOT / "serving" / "queue").glob("*.py"):
        calls = {
            node.func.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert not calls & {"scan", "scan_iter", "keys"}, path
    assert (
        "'SCAN'" not in Path(scripts.__file__).read_text()
        and "'KEYS'" not in Path(scripts.__file__).read_text()
    )


def test_every_script_names_redis_keys_only_through_keys():
    """A key a script builds itself (from ARGV or a literal) could lie in another slot: every
    redis.call's key argument is KEYS[...] or a local bound to one."""
    for name in dir(scripts):
        text = getattr(scripts, name)
        if not name.isupper() or not isinstance(text, str):
            continue
        bound_to_keys = set(re.findall(r"local (\w+(?:, \w+)*) = KEYS", text)) | {"doorbell"}
        names = {n.strip() for group in bound_to_keys for n in group.split(",")}
        for first in re.findall(r"redis\.call\('\w+', ([^,)]+)", text):
            assert first.startswith("KEYS[") or first in names, (name, first)


def test_the_sentinel_url_with_passwords_and_options():
    parsed = parse_sentinel_url(
        "redis+sentinel://:pw@h1:26379,h2:26380,h3/mymaster/2?socket_timeout=0.5&sentinel_password=sp"
    )
    assert parsed.sentinels == [("h1", 26379), ("h2", 26380), ("h3", 26379)]
    assert (parsed.service, parsed.db, parsed.tls) == ("mymaster", 2, False)
    assert parsed.connection_kwargs == {"password": "pw", "socket_timeout": 0.5}
    assert parsed.sentinel_kwargs == {"password": "sp", "socket_timeout": 0.5}


def test_the_readme_form_of_the_sentinel_url():
    parsed = parse_sentinel_url("redis+sentinel://host1:26379,host2:26379,host3:26379/mymaster/0")
    assert parsed.sentinels == [("host1", 26379), ("host2", 26379), ("host3", 26379)]
    assert (parsed.service, parsed.db) == ("mymaster", 0)


def test_a_tls_sentinel_url_with_a_user_and_ipv6():
    parsed = parse_sentinel_url("rediss+sentinel://u:p%40ss@[::1]:5000,127.0.0.1/svc?ssl_ca_certs=/ca.pem")
    assert parsed.sentinels == [("::1", 5000), ("127.0.0.1", 26379)]
    assert parsed.db == 0 and parsed.tls
    assert parsed.connection_kwargs == {
        "username": "u",
        "password": "p@ss",
        "ssl": True,
        "ssl_ca_certs": "/ca.pem",
    }
    assert parsed.sentinel_kwargs == {"ssl": True, "ssl_ca_certs": "/ca.pem"}


@pytest.mark.parametrize(
    "bad", ["redis://h/0", "redis+sentinel://h1:1", "redis+sentinel:///svc", "redis+sentinel://h/s/0/x"]
)
def test_sentinel_urls_that_name_no_master_or_no_sentinel_are_refused(bad):
    with pytest.raises(ValueError):
        parse_sentinel_url(bad)


def test_which_urls_have_replicas():
    assert is_sentinel_url("rediss+sentinel://h/m") and not is_sentinel_url("redis://h")
    assert is_cluster_url("redis+cluster://h:7000") and not is_cluster_url("redis://h")
    assert is_replicated_url("redis+cluster://h:7000") and not is_replicated_url("unix:///tmp/r.sock")


def test_the_cluster_url_names_startup_nodes_and_options():
    nodes, options = parse_cluster_url("redis+cluster://:pw@127.0.0.1:7000,[::1]:7001,h?socket_timeout=0.25")
    assert nodes == [("127.0.0.1", 7000), ("::1", 7001), ("h", 6379)]
    assert options == {"password": "pw", "socket_timeout": 0.25}
    assert parse_cluster_url("rediss+cluster://h:1")[1] == {"ssl": True}
    with pytest.raises(ValueError):
        parse_cluster_url("redis+cluster://")
