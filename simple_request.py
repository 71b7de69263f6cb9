"""Classify images with a running server and print the ranked labels.

    python simple_request.py IMAGE [IMAGE ...] [--top-k K] [--url http://127.0.0.1:5000/predict]
    python simple_request.py IMAGE ... --async     # submit a job (POST /jobs), then long-poll it

Several images go in one request (each is batched on its own in the server). Exits 0 on success;
on an error prints the server's message and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:5000/predict"


def classify(
    images: list[Path], url: str, timeout: float, top_k: int | None = None
) -> tuple[int, dict[str, Any]]:
    with ExitStack() as files:
        fields = [("image", (image.name, files.enter_context(image.open("rb")))) for image in images]
        params = {"top_k": top_k} if top_k else None
        return _answer(requests.post(url, files=fields, params=params, timeout=timeout))


def classify_later(
    images: list[Path], url: str, timeout: float, top_k: int | None = None
) -> tuple[int, dict[str, Any]]:
    """Submit a job, then long-poll it until it ends or ``timeout`` passes."""
    jobs_url = url.rsplit("/predict", 1)[0] + "/jobs"
    status, body = classify(images, jobs_url, timeout, top_k)
    if status != 202:
        return status, body
    print(f"job {body['id']}: {body['images']} image(s) queued", file=sys.stderr)
    give_up = time.monotonic() + timeout
    while body.get("status") in ("queued", "running") and time.monotonic() < give_up:
        wait = max(1, min(30, int(give_up - time.monotonic())))
        status, body = _answer(
            requests.get(f"{jobs_url}/{body['id']}", params={"wait": wait}, timeout=wait + 10)
        )
    if body.get("status") in ("queued", "running"):
        return 504, {"success": False, "error": f"job {body['id']} is still {body['status']}"}
    return status, body


def _answer(response: requests.Response) -> tuple[int, dict[str, Any]]:
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"success": False, "error": response.text.strip()[:200]}


def print_result(body: dict[str, Any], name: str | None = None) -> None:
    model = body.get("model", {})
    heading = f"{name}: " if name else ""
    note = f" ({model['note']})" if model.get("note") else ""
    print(f"{heading}model: {model.get('name', '?')}{note}")
    for rank, prediction in enumerate(body["predictions"], start=1):
        print(f"{rank}. {prediction['label']}: {prediction['probability']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, nargs="+", help="image files to classify")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"predict endpoint (default: {DEFAULT_URL})")
    parser.add_argument("--top-k", type=int, default=None, help="predictions per image (default: server's)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default: 30)")
    parser.add_argument(
        "--async",
        dest="later",
        action="store_true",
        help="submit a job and poll it (the server's bulk lane) instead of waiting on /predict",
    )
    args = parser.parse_args(argv)

    missing = [str(image) for image in args.images if not image.is_file()]
    if missing:
        print(f"error: not a file: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        send = classify_later if args.later else classify
        status, body = send(args.images, args.url, args.timeout, args.top_k)
    except requests.RequestException as exc:
        print(f"error: could not reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if not body.get("success"):
        print(f"error ({status}): {body.get('error', 'unknown error')}", file=sys.stderr)
        return 1
    if "results" in body:
        for image, result in zip(args.images, body["results"]):
            print_result(result, image.name)
    else:
        print_result(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
