"""API keys and limits from the command line (the web servers read them from Redis within seconds).

    python -m serving.tenants add TENANT [--images-per-second R] [--burst B] [--max-queued N]
                                         [--max-jobs N] [--models a,b]   # prints a new key, once
    python -m serving.tenants limits TENANT [the same limits]            # change them, no new key
    python -m serving.tenants list                                       # tenants, limits, key ids
    python -m serving.tenants revoke TENANT [--key KEY_ID]               # one key, or all and the tenant

Every command takes --redis-url and --queue-name (default: REDIS_URL and QUEUE_NAME, as the
server reads them). Adding a key to a tenant that has one rotates without a restart: give the
new key out, then revoke the old one by its id.
"""

from __future__ import annotations

import argparse
import sys

import orjson
import redis

from serving.queue.connection import connect, deployment_parser
from serving.tenants.registry import Limits, TenantRegistry, check_tenant_name


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant")
    parser.add_argument("--images-per-second", type=float, default=0.0, help="sustained rate (0: none)")
    parser.add_argument("--burst", type=int, default=0, help="images at once above the rate (default: 1 s)")
    parser.add_argument("--max-queued", type=int, default=0, help="images queued per model version (0: none)")
    parser.add_argument("--max-jobs", type=int, default=0, help="jobs open at once (0: none)")
    parser.add_argument("--models", default="", help="comma-separated models it may use (default: all)")


def _parser() -> argparse.ArgumentParser:
    parser = deployment_parser("python -m serving.tenants", __doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _limit_flags(commands.add_parser("add", help="create a tenant or give it another key"))
    _limit_flags(commands.add_parser("limits", help="change a tenant's limits"))
    commands.add_parser("list", help="every tenant, its limits and its keys' ids")
    revoke = commands.add_parser("revoke", help="revoke a key, or the tenant and all its keys")
    revoke.add_argument("tenant")
    revoke.add_argument("--key", dest="key_id", help="the id of one key (from list)")
    return parser


def _limits(args: argparse.Namespace) -> Limits:
    numbers = (args.images_per_second, args.burst, args.max_queued, args.max_jobs)
    if any(number < 0 for number in numbers):
        raise ValueError("limits are 0 (none) or more")
    models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    return Limits(args.images_per_second, args.burst, args.max_queued, args.max_jobs, models)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    registry = TenantRegistry(connect(args.redis_url, 5.0), args.queue_name)
    try:
        if args.command == "add":
            key = registry.add(check_tenant_name(args.tenant), _limits(args))
            print(key)
            print(f"the key of tenant {args.tenant!r}: it is shown only now", file=sys.stderr)
        elif args.command == "limits":
            if not registry.set_limits(args.tenant, _limits(args)):
                print(f"no tenant {args.tenant!r}", file=sys.stderr)
                return 1
        elif args.command == "list":
            listing = [
                {"tenant": name, "limits": orjson.loads(limits.to_json()), "keys": keys}
                for name, (limits, keys) in registry.tenants().items()
            ]
            print(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode())
        elif args.command == "revoke":
            revoked = registry.revoke(args.tenant, args.key_id)
            print(f"revoked {revoked} key(s) of {args.tenant!r}")
            if args.key_id and not revoked:
                return 1
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    except redis.ConnectionError as exc:
        print(
            f"cannot reach Redis at {args.redis_url} ({exc}). The tenants live in the deployment's "
            "Redis: pass its --redis-url (a one-process server's embedded Redis is private to it; "
            "start that server with --redis-url to manage its keys).",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
