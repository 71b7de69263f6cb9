"""Classify one image with a running server and print the ranked labels.

    python simple_request.py IMAGE [--url http://127.0.0.1:5000/predict]

Exits 0 on success; on an error prints the server's message and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import requests

DEFAULT_URL = "http://127.0.0.1:5000/predict"


def classify(image: Path, url: str, timeout: float) -> tuple[int, dict]:
    with image.open("rb") as handle:
        response = requests.post(url, files={"image": (image.name, handle)}, timeout=timeout)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"success": False, "error": response.text.strip()[:200]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="image file to classify")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"predict endpoint (default: {DEFAULT_URL})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default: 30)")
    args = parser.parse_args(argv)

    if not args.image.is_file():
        print(f"error: {args.image} is not a file", file=sys.stderr)
        return 1
    try:
        status, body = classify(args.image, args.url, args.timeout)
    except requests.RequestException as exc:
        print(f"error: could not reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if not body.get("success"):
        print(f"error ({status}): {body.get('error', 'unknown error')}", file=sys.stderr)
        return 1
    model = body.get("model", {})
    print(f"model: {model.get('name', '?')}" + (f" ({model['note']})" if model.get("note") else ""))
    for rank, prediction in enumerate(body["predictions"], start=1):
        print(f"{rank}. {prediction['label']}: {prediction['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
