"""Classify images with a running server and print the ranked labels.

    python simple_request.py IMAGE [IMAGE ...] [--top-k K] [--url http://127.0.0.1:5000/predict]
    python simple_request.py IMAGE ... --async     # submit a job (POST /jobs), follow its progress
    python simple_request.py --follow JOB_ID       # follow a job already submitted (to its result)

Several images go in one request (each is batched on its own in the server). Exits 0 on success;
on an error prints the server's message and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import requests
from tqdm import tqdm

DEFAULT_URL = "http://127.0.0.1:5000/predict"
# Every call goes through one session: its connection is reused, and it carries the API key.
SESSION = requests.Session()


def classify(
    images: list[Path],
    url: str,
    timeout: float,
    top_k: int | None = None,
    model: str | None = None,
    version: str | None = None,
) -> tuple[int, dict[str, Any]]:
    with ExitStack() as files:
        fields = [("image", (image.name, files.enter_context(image.open("rb")))) for image in images]
        asked = {"top_k": top_k, "model": model, "version": version}
        params = {key: value for key, value in asked.items() if value}
        return _answer(SESSION.post(url, files=fields, params=params or None, timeout=timeout))


def classify_later(
    images: list[Path],
    url: str,
    timeout: float,
    top_k: int | None = None,
    model: str | None = None,
    version: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Submit a job, then long-poll it until it ends or ``timeout`` passes."""
    jobs_url = url.rsplit("/predict", 1)[0] + "/jobs"
    status, body = classify(images, jobs_url, timeout, top_k, model, version)
    if status != 202:
        return status, body
    print(f"job {body['id']}: {body['images']} image(s) queued", file=sys.stderr)
    return follow(jobs_url, str(body["id"]), timeout, int(body["images"]))


def follow(
    jobs_url: str, job_id: str, timeout: float, images: int | None = None
) -> tuple[int, dict[str, Any]]:
    """Follow a job's events (GET /jobs/<id>/events) with a progress bar until its result, or
    ``timeout`` passes; a dropped stream is resumed where it stopped (Last-Event-ID)."""
    give_up = time.monotonic() + timeout
    last: str | None = None
    with tqdm(total=images, unit="image", desc=f"job {job_id[:8]}", file=sys.stderr) as bar:
        while time.monotonic() < give_up:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                response = SESSION.get(
                    f"{jobs_url}/{job_id}/events", headers=headers, stream=True, timeout=40
                )
            except requests.ConnectionError:
                time.sleep(1)
                continue
            if response.status_code != 200:
                return _answer(response)
            kind, data = "", ""
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("id: "):
                    last = line[4:]
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and kind:
                    event = orjson.loads(data)
                    if kind == "result":
                        response.close()
                        if event.get("status") == "deleted":
                            return 404, {"success": False, "error": f"job {job_id} was deleted"}
                        return 200 if event.get("success") else 500, event
                    if bar.total is None and "images" in event:
                        bar.total = event["images"]
                    bar.update(1)
                    kind, data = "", ""
    return 504, {"success": False, "error": f"job {job_id} did not end within {timeout:g} s"}


def _answer(response: requests.Response) -> tuple[int, dict[str, Any]]:
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"success": False, "error": response.text.strip()[:200]}


def print_result(body: dict[str, Any], name: str | None = None) -> None:
    model = body.get("model", {})
    heading = f"{name}: " if name else ""
    note = f" ({model['note']})" if model.get("note") else ""
    version = f" version {model['version']}" if model.get("version") else ""
    print(f"{heading}model: {model.get('name', '?')}{version}{note}")
    for rank, prediction in enumerate(body["predictions"], start=1):
        print(f"{rank}. {prediction['label']}: {prediction['probability']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, nargs="*", help="image files to classify")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"predict endpoint (default: {DEFAULT_URL})")
    parser.add_argument("--top-k", type=int, default=None, help="predictions per image (default: server's)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default: 30)")
    parser.add_argument(
        "--async",
        dest="later",
        action="store_true",
        help="submit a job (the server's bulk lane) and follow its progress instead of waiting on /predict",
    )
    parser.add_argument("--model", help="the model to ask (default: the server's default model)")
    parser.add_argument("--version", help="the model's version (default: its current version)")
    parser.add_argument("--follow", metavar="JOB_ID", help="follow a job submitted earlier to its result")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("API_KEY"),
        help="the key of a server run with --auth keys (default: API_KEY)",
    )
    args = parser.parse_args(argv)
    if args.api_key:
        SESSION.headers["Authorization"] = f"Bearer {args.api_key}"
    if args.follow:
        try:
            status, body = follow(args.url.rsplit("/predict", 1)[0] + "/jobs", args.follow, args.timeout)
        except requests.RequestException as exc:
            print(f"error: could not reach {args.url}: {exc}", file=sys.stderr)
            return 1
        return _print_answer(status, body, args.images)
    if not args.images:
        parser.error("give at least one image (or --follow JOB_ID)")

    missing = [str(image) for image in args.images if not image.is_file()]
    if missing:
        print(f"error: not a file: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        send = classify_later if args.later else classify
        status, body = send(args.images, args.url, args.timeout, args.top_k, args.model, args.version)
    except requests.RequestException as exc:
        print(f"error: could not reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return _print_answer(status, body, args.images)


def _print_answer(status: int, body: dict[str, Any], images: list[Path]) -> int:
    if not body.get("success"):
        print(f"error ({status}): {body.get('error', 'unknown error')}", file=sys.stderr)
        return 1
    if "results" in body:
        names = [image.name for image in images] or [f"image {i + 1}" for i in range(len(body["results"]))]
        for name, result in zip(names, body["results"]):
            print_result(result, name)
    else:
        print_result(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
