"""Break the critical behaviours on purpose, one at a time, and check that a fast test fails.

Each mutant is a text patch (file, exact old snippet, new snippet) applied to a scratch copy of
the repository (tracked and untracked files that git does not ignore, as they are now); the
tests named for it then run there (``-m "not slow" -x``) and must fail. A snippet that is not
found exactly once stops the check with an error, so the list cannot rot silently when the code
it breaks changes: update the snippet with the code.

    python tools/mutation_check.py              # the unbroken copy passes, then every mutant
    python tools/mutation_check.py --list       # the mutants' names
    python tools/mutation_check.py cap-8 crop-1.0   # only these

Exit status 0 when every mutant was caught, 1 when one survived, 2 on a snippet not found or
tests that fail on the unbroken copy. Mutants run one after another (the tests start Redis
servers and threads; the machines have two cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_MUTANT_TIMEOUT = 300


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the behaviour it breaks
    path: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (old snippet, new snippet), each old found exactly once
    tests: tuple[str, ...]  # pytest node ids, of which at least one must fail


MUTANTS = (
    Mutant(
        "take-not-atomic",
        "the batch take reads the lane, pauses, then removes what it read (two workers can take the same)",
        "serving/queue/batch_calls.py",
        (
            (
                "        result: list[list[bytes]] = self._take(keys=keys, args=args)\n",
                "        from serving.queue.keys import DEFAULT_TENANT\n\n"
                "        lane = self.keys.tenant_lane(DEFAULT_TENANT, INTERACTIVE)\n"
                "        result = [self.redis.lrange(lane, 0, room - 1), []]\n"
                "        time.sleep(0.002)\n"
                "        for raw in result[0]:\n"
                "            self.redis.lrem(lane, 1, raw)\n"
                "        if result[0]:\n"
                "            self.redis.rpush(keys[2], *result[0])\n",
            ),
        ),
        ("tests/test_worker.py::test_two_workers_on_one_queue_never_process_the_same_message",),
    ),
    Mutant(
        "requeue-drops",
        "a dead worker's batch is deleted instead of returned to the queue",
        "serving/queue/scripts.py",
        (
            (
                "    redis.call('LPUSH', lanes[owner][lane], items[i])\n",
                "",
            ),
        ),
        ("tests/test_queue.py::test_dead_workers_messages_go_back_to_the_head_of_their_lanes_in_order",),
    ),
    Mutant(
        "take-not-fair",
        "a take serves tenants first come, first served: one tenant's flood delays everyone",
        "serving/queue/scripts.py",
        (
            (
                "    for i = 2, #live do if score[live[i]] < score[live[best]] then best = i end end\n",
                "",
            ),
        ),
        ("tests/test_fair_share.py::test_one_tenants_flood_delays_anothers_image_by_at_most_one_batch",),
    ),
    Mutant(
        "int8-switch-unsaid",
        "a worker switched to INT8 made from traffic still says f32/bf16 in answers and heartbeats",
        "serving/worker/loop.py",
        (("        self._model = describe(self.classifier, *self.served)\n", ""),),
        (
            "tests/test_traffic_calibration.py::"
            "test_the_switch_to_int8_made_from_traffic_loses_no_request_and_a_restart_starts_in_int8",
        ),
    ),
    Mutant(
        "auto-batch-ignored",
        "a worker on --precision auto runs --batch-size, not the batch size it measured best",
        "serving/worker/factory.py",
        (("        settings = settings.replace(batch_size=classifier.chosen_batch_size)\n", ""),),
        ("tests/test_auto_choice.py::test_a_worker_on_auto_runs_the_batch_size_it_measured_and_says_so",),
    ),
    Mutant(
        "requeue-live",
        "a worker's batch is requeued while its heartbeat lives",
        "serving/queue/scripts.py",
        (("if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end\n", ""),),
        ("tests/test_queue.py::test_dead_workers_messages_go_back_to_the_head_of_their_lanes_in_order",),
    ),
    Mutant(
        "bound-off-by-one",
        "the interactive lane takes one message past its bound (503 one too late)",
        "serving/queue/scripts.py",
        (
            (
                "if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then\n"
                "  redis.call('DEL', unpack(KEYS, 7))\n",
                "if redis.call('LLEN', KEYS[1]) > tonumber(ARGV[1]) then\n"
                "  redis.call('DEL', unpack(KEYS, 7))\n",
            ),
        ),
        ("tests/test_web.py::test_full_queue_is_503_with_retry_after",),
    ),
    Mutant(
        "deadline-plus-4s",
        "the answer wait runs 4 s past --client-timeout before the 504",
        "serving/queue/request_calls.py",
        (
            (
                "        give_up = time.monotonic() + timeout\n",
                "        give_up = time.monotonic() + timeout + 4\n",
            ),
        ),
        ("tests/test_web.py::test_no_result_before_the_deadline_is_504_and_the_message_is_withdrawn",),
    ),
    Mutant(
        "cancel-leaves-queued",
        "DELETE /jobs/<id> leaves the job's queued images in the bulk lane",
        "serving/queue/scripts.py",
        (("    removed = removed + redis.call('LREM', KEYS[8], 1, ARGV[1] .. ':' .. index)\n", ""),),
        ("tests/test_jobs.py::test_a_job_cancelled_while_queued_is_never_computed",),
    ),
    Mutant(
        "cancel-ignored",
        "a cancelled job's images are still computed (the cancel only reports)",
        "serving/queue/scripts.py",
        (
            ("    removed = removed + redis.call('LREM', KEYS[8], 1, ARGV[1] .. ':' .. index)\n", ""),
            (
                "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7])\n"
                "redis.call('RPUSH', KEYS[3], 'deleted')\n",
                "redis.call('RPUSH', KEYS[3], 'deleted')\n",
            ),
        ),
        ("tests/test_jobs.py::test_a_job_cancelled_while_queued_is_never_computed",),
    ),
    Mutant(
        "long-poll-sleeps",
        "the job long-poll sleeps 0.9 x its wait instead of waking when the job ends",
        "serving/queue/job_calls.py",
        (
            (
                'return self.blocking.blmove(key, key, cast(int, timeout), "LEFT", "RIGHT") is not None\n',
                "time.sleep(0.9 * timeout)\n        return bool(self.redis.exists(key))\n",
            ),
        ),
        ("tests/test_jobs.py::test_a_long_poll_returns_as_the_job_ends",),
    ),
    Mutant(
        "crop-1.0",
        "the centre crop keeps the whole shorter side (crop fraction 1.0, not 0.875)",
        "serving/images.py",
        (("CROP_FRACTION = 0.875", "CROP_FRACTION = 1.0"),),
        ("tests/test_helpers.py::test_the_crop_is_the_centre_the_rule_defines_pixel_for_pixel",),
    ),
    Mutant(
        "crop-off-centre",
        "the crop is 10 % of the width right of the centre",
        "serving/images.py",
        (
            ("        width / 2 - half_width,\n", "        width * 0.6 - half_width,\n"),
            ("        width / 2 + half_width,\n", "        width * 0.6 + half_width,\n"),
        ),
        ("tests/test_helpers.py::test_the_crop_is_the_centre_the_rule_defines_pixel_for_pixel",),
    ),
    Mutant(
        "v2-big-endian",
        "the v2 binary BYTES tensors use big-endian length prefixes, both ways",
        "serving/web/v2_tensors.py",
        (
            (
                '(length,) = struct.unpack_from("<I", raw, offset)',
                '(length,) = struct.unpack_from(">I", raw, offset)',
            ),
            ('struct.pack("<I", len(element))', 'struct.pack(">I", len(element))'),
        ),
        (
            "tests/test_v2.py::test_binary_inputs_and_outputs_built_and_read_by_hand",
            "tests/test_v2.py::test_classification_extension_and_binary_outputs",
        ),
    ),
    Mutant(
        "bulk-cap-8",
        "a bulk-only batch may cost 8x a one-image batch while interactive requests come (not 1.5x)",
        "serving/worker/batching.py",
        (("BULK_ALONE = 1.5\n", "BULK_ALONE = 8\n"),),
        ("tests/test_batching.py::test_interactive_requests_are_answered_while_a_full_bulk_lane_drains",),
    ),
)


class SnippetNotFound(Exception):
    pass


def scratch_copy(destination: Path) -> Path:
    """The repository's files (tracked, and untracked ones git does not ignore) under
    ``destination/repo``, with ``destination/shared`` pointing at the shared folder the tests
    read their photos from."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    repo = destination / "repo"
    for name in filter(None, (entry.decode() for entry in listed)):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is skipped
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (destination / "shared").symlink_to(shared)
    return repo


def patched(text: str, mutant: Mutant) -> str:
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise SnippetNotFound(
                f"{mutant.name}: {mutant.path} holds {count} copies of the snippet (want exactly 1):\n{old}"
            )
        text = text.replace(old, new)
    return text


def run_tests(repo: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=repo, capture_output=True, text=True, timeout=PER_MUTANT_TIMEOUT, env=env
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return -1, out, time.monotonic() - started
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def last_lines(output: str, count: int = 15) -> str:
    return "\n".join("    " + line for line in output.strip().splitlines()[-count:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the tests on the unbroken copy"
    )
    args = parser.parse_args(argv)
    if args.list:
        for mutant in MUTANTS:
            print(f"{mutant.name:22} {mutant.path}: {mutant.what}")
        return 0
    unknown = set(args.names) - {mutant.name for mutant in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    chosen = [mutant for mutant in MUTANTS if not args.names or mutant.name in args.names]

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as scratch:
        repo = scratch_copy(Path(scratch))
        originals = {mutant.path: (repo / mutant.path).read_text() for mutant in chosen}
        try:  # every snippet first: a stale one stops the check before any test runs
            for mutant in chosen:
                patched(originals[mutant.path], mutant)
        except SnippetNotFound as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(test for mutant in chosen for test in mutant.tests))
            code, output, seconds = run_tests(repo, tests)
            print(f"unbroken copy: {'passed' if code == 0 else 'FAILED'} ({seconds:.0f} s)", flush=True)
            if code != 0:
                print(last_lines(output, 30), file=sys.stderr)
                return 2
        survivors = []
        for mutant in chosen:
            target = repo / mutant.path
            target.write_text(patched(originals[mutant.path], mutant))
            try:
                code, output, seconds = run_tests(repo, mutant.tests)
            finally:
                target.write_text(originals[mutant.path])
            if code == 1:
                verdict = "caught"
            elif code == -1:
                verdict = f"caught (the tests ran past {PER_MUTANT_TIMEOUT} s)"
            elif code == 0:
                verdict = "SURVIVED"
                survivors.append(mutant.name)
            else:
                print(f"{mutant.name}: pytest exited {code}\n{last_lines(output, 30)}", file=sys.stderr)
                return 2
            print(f"{mutant.name:22} {verdict} ({seconds:.0f} s): {mutant.what}", flush=True)
            if code == 0:
                print(last_lines(output, 5))
    caught = len(chosen) - len(survivors)
    print(
        f"{caught} of {len(chosen)} mutants caught in {time.monotonic() - started:.0f} s"
        + (f"; survived: {', '.join(survivors)}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
