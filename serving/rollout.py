"""Versions and rollouts from the command line: which version of a model answers requests that
name none, and what share a canary gets. Writes the catalogue in Redis (serving/queue/catalogue.py);
every web server follows within a second.

    python -m serving.rollout list                       [--redis-url URL] [--queue-name NAME]
    python -m serving.rollout pin MODEL VERSION          # VERSION answers unversioned requests
    python -m serving.rollout unpin MODEL                # back to the newest live version
    python -m serving.rollout canary MODEL VERSION PERCENT   # that share of them to VERSION
    python -m serving.rollout canary MODEL --off
    python -m serving.rollout forget MODEL VERSION       # drop a retired version's record

Without a pin a model's current version is its newest version with a live worker: starting the
workers of version 2 switches to it once they are warm (they announce themselves only then).
A pin or a switch returns once every web server has read it (one catalogue refresh).
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from serving.queue.catalogue import Catalogue, check_name, check_version
from serving.queue.connection import connect, deployment_parser

PROPAGATION_SECONDS = 1.5  # a web server reads the catalogue at least once a second


def _parser() -> argparse.ArgumentParser:
    parser = deployment_parser("python -m serving.rollout", __doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every model, its versions, and which is current")
    pin = commands.add_parser("pin", help="make VERSION the current version of MODEL")
    pin.add_argument("model")
    pin.add_argument("version")
    unpin = commands.add_parser("unpin", help="the newest live version is current again")
    unpin.add_argument("model")
    canary = commands.add_parser("canary", help="send PERCENT of MODEL's unversioned requests to VERSION")
    canary.add_argument("model")
    canary.add_argument("version", nargs="?")
    canary.add_argument("percent", nargs="?", type=float)
    canary.add_argument("--off", action="store_true")
    forget = commands.add_parser("forget", help="drop the record of a version no worker serves")
    forget.add_argument("model")
    forget.add_argument("version")
    return parser


def describe(catalogue: Catalogue) -> list[dict[str, object]]:
    state = catalogue.read()
    return [
        {
            "model": name,
            "current": state.current(name),
            "pinned": state.pinned.get(name),
            "canary": vars(state.canary[name]) if name in state.canary else None,
            "versions": {
                v: ("live" if state.is_live(name, v) else "idle")
                for v in sorted(state.versions[name], key=int)
            },
        }
        for name in state.models()
    ]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    catalogue = Catalogue(connect(args.redis_url, 5.0), args.queue_name)
    try:
        if args.command == "list":
            print(orjson.dumps(describe(catalogue), option=orjson.OPT_INDENT_2).decode())
            return 0
        check_name(args.model)
        state = catalogue.read()
        known = state.versions.get(args.model, {})
        if args.command in ("pin", "forget") or (args.command == "canary" and not args.off):
            if args.version is None or check_version(args.version) not in known:
                versions = ", ".join(sorted(known, key=int)) or "none"
                print(
                    f"error: {args.model!r} has no version {args.version!r} (it has: {versions})",
                    file=sys.stderr,
                )
                return 2
        if args.command == "pin":
            catalogue.pin(args.model, args.version)
        elif args.command == "unpin":
            catalogue.unpin(args.model)
        elif args.command == "canary":
            if args.off:
                catalogue.clear_canary(args.model)
            elif args.percent is None:
                print("error: give the canary's PERCENT (or --off)", file=sys.stderr)
                return 2
            else:
                catalogue.set_canary(args.model, args.version, args.percent)
        elif args.command == "forget":
            if state.is_live(args.model, args.version):
                print(
                    f"error: version {args.version} of {args.model!r} still has live workers", file=sys.stderr
                )
                return 2
            catalogue.forget(args.model, args.version)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    time.sleep(PROPAGATION_SECONDS)  # returns once every web server routes by it
    print(orjson.dumps(describe(catalogue), option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
