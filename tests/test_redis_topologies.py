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


def _split_arguments(text: str) -> list[str]:
    """Top-level comma-separated arguments of a Lua call (no nested calls with commas here)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def test_every_script_names_redis_keys_only_through_keys():
    """A key a script builds itself (from ARGV or a literal) could lie in another slot: every
    redis.call's key argument is KEYS[...], a local bound to one, or a key parameter of a local
    function whose every call passes one of those."""
    for name in dir(scripts):
        text = getattr(scripts, name)
        if not name.isupper() or not isinstance(text, str):
            continue
        bound = set()
        for group in re.findall(r"local (\w+(?:, \w+)*) = KEYS", text):
            bound |= {n.strip() for n in group.split(",")}
        # Tables of keys: lane[name] = KEYS[...], lanes[tenant] = {KEYS[...], ...}
        bound |= set(re.findall(r"(\w+)\[[^\n=]+\] = \{?KEYS\[", text))
        bound |= set(re.findall(r"\w+\[name\], (\w+)\[name\] = [^,\n]+, KEYS\[", text))
        # Local functions: a parameter is a key parameter when the body uses it as a key
        # (redis.call, or passed on as another function's key); every call must then pass a key.
        functions = {}
        for match in re.finditer(r"local function (\w+)\(([^)]*)\)", text):
            end = text.index("\nend\n", match.end())
            params = [p.strip() for p in match.group(2).split(",")]
            functions[match.group(1)] = (params, match.end(), end)

        def enclosing(position: int, functions=functions) -> str | None:
            return next((f for f, (_, start, end) in functions.items() if start <= position < end), None)

        calls = [
            (function, call.start(), _split_arguments(call.group(1)))
            for function in functions
            for call in re.finditer(rf"(?<!function ){function}\(([^()]*(?:\([^()]*\))?[^()]*)\)", text)
        ]
        uses = [
            (call.start(), [call.group(1)]) for call in re.finditer(r"redis\.call\('\w+', ([^,)]+)", text)
        ]
        key_parameters: dict[str, set[int]] = {f: set() for f in functions}
        changed = True
        while changed:  # a key parameter passed on makes the caller's parameter one too
            changed = False
            for position, arguments, positions in [(p, a, [0]) for p, a in uses] + [
                (p, a, sorted(key_parameters[f])) for f, p, a in calls
            ]:
                owner = enclosing(position)
                for index in positions:
                    base = arguments[index].split("[")[0]
                    if owner and base in functions[owner][0]:
                        found = functions[owner][0].index(base)
                        if found not in key_parameters[owner]:
                            key_parameters[owner].add(found)
                            changed = True
        for position, arguments, positions in [(p, a, [0]) for p, a in uses] + [
            (p, a, sorted(key_parameters[f])) for f, p, a in calls
        ]:
            owner = enclosing(position)
            for index in positions:
                argument = arguments[index]
                base = argument.split("[")[0]
                in_owner = owner is not None and base in functions[owner][0]
                from_keys = argument.startswith(("KEYS[", "unpack(KEYS"))  # unpack(KEYS, i): KEYS[i..]
                assert from_keys or base in bound or in_owner, (name, argument)


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
