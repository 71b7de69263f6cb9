"""python -m bench --failover: the failover row. A Sentinel-managed primary (2 replicas, 3
sentinels, down-after-milliseconds 1000) and a 3-primary, 3-replica Cluster, each under the
load of tests/failover.py (16 interactive clients, a job stream, two gunicorn web servers and
two workers on the tiny colour model) while the queue's primary is killed with SIGKILL.

Prints, per topology: answered requests per second before, during and after the failover, the
unavailability window (from the kill to the first 200 of a request sent after it), and the
wrong, hung, lost and doubled counts. The goal: unavailable <= detection (1 s) + 2 s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness.redis_ha import ClusterHarness, SentinelHarness
from tests.failover import ClusterTopology, Deployment, Figures, SentinelTopology, run
from tests.support import build_colour_model

DETECTION_SECONDS = 1.0  # Sentinel's down-after-milliseconds, the Cluster's node timeout
GOAL_SECONDS = DETECTION_SECONDS + 2.0


def measure(kind: str, log_dir: Path, model: tuple[Path, Path]) -> Figures:
    harness: SentinelHarness | ClusterHarness
    if kind == "sentinel":
        harness = SentinelHarness(
            replicas=2, sentinels=3, down_after_ms=1000, failover_timeout_ms=2000
        ).start()
        topology = SentinelTopology(harness)
    else:
        harness = ClusterHarness(primaries=3, replicas_per_primary=1, node_timeout_ms=1000).start()
        topology = ClusterTopology(harness)  # type: ignore[assignment]
    deployment = None
    try:
        deployment = Deployment(topology, log_dir / kind, model)
        return run(deployment, note=lambda line: None)
    finally:
        if deployment:
            deployment.stop()
        harness.stop()


def format_rows(rows: dict[str, Figures]) -> str:
    header = (
        f"{'failover (kill -9 of the primary)':<34} {'before/s':>8} {'during/s':>8} {'after/s':>8} "
        f"{'failover':>8} {'unavail':>8} {'goal':>6} {'wrong':>5} {'hung':>4} {'503':>4} {'504':>4} "
        f"{'jobs ok':>7} {'lost':>4} {'twice':>5}"
    )
    lines = [header]
    for kind, f in rows.items():
        unavailable = f.unavailable_seconds if f.unavailable_seconds is not None else float("nan")
        lines.append(
            f"{kind:<34} {f.rates['before']:>8.1f} {f.rates['during']:>8.1f} {f.rates['after']:>8.1f} "
            f"{f.failover_seconds:>7.2f}s {unavailable:>7.2f}s "
            f"{'met' if unavailable <= GOAL_SECONDS else 'NO':>6} "
            f"{f.wrong:>5} {f.hung:>4} {f.refused_503:>4} {f.timed_out_504:>4} "
            f"{f.jobs_accepted:>7} {f.jobs_lost:>4} {f.jobs_answered_twice:>5}"
        )
    lines.append(
        f"goal: unavailable <= detection {DETECTION_SECONDS:.0f} s + 2 s, 0 wrong, 0 lost accepted jobs"
    )
    return "\n".join(lines)


def run_failover(out: Path) -> tuple[str, dict[str, dict[str, object]]]:
    log_dir = out / "logs" / "failover"
    log_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(tempfile.mkdtemp(prefix="bench-colour-"))
    model = build_colour_model(model_dir)
    rows = {kind: measure(kind, log_dir, model) for kind in ("sentinel", "cluster")}
    return format_rows(rows), {kind: vars(f) for kind, f in rows.items()}
