"""deploy/grafana/inference.json: it parses as a dashboard, and every query names metrics (and
labels) that a live /metrics of the service exports."""

from __future__ import annotations

import io
import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import ROOT, colour_image

DASHBOARD = ROOT / "deploy" / "grafana" / "inference.json"
# The service's metric names in a query (all of them start inference_), the matchers and groupings.
METRIC = re.compile(r"\b(inference_[a-z_]+)\b")
MATCHERS = re.compile(r"\b(inference_[a-z_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\bby \(([^)]*)\)")


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


@pytest.fixture(scope="module")
def exported(colour_app) -> dict[str, set[str]]:
    """Sample name -> label names, from a live scrape after a request and a job."""
    client = colour_app.test_client()
    image = {"image": (io.BytesIO(colour_image("red")), "red.png")}
    assert client.post("/predict", data=image, content_type="multipart/form-data").status_code == 200
    job = client.post(
        "/jobs",
        data={"image": (io.BytesIO(colour_image("blue")), "b.png")},
        content_type="multipart/form-data",
    ).get_json()
    assert client.get(f"/jobs/{job['id']}?wait=10").get_json()["status"] == "done"
    assert client.post("/predict", data={}).status_code == 400
    text = client.get("/metrics").get_data(as_text=True)
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def test_the_dashboard_parses_and_every_panel_is_placed_and_queried():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert (
            set(panel["gridPos"]) == {"x", "y", "w", "h"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for subject in (
        "route and status",
        "latency",
        "queue depth",
        "batch size",
        "model time",
        "workers",
        "503",
        "jobs",
    ):
        assert subject in titles


def test_every_query_names_metrics_and_labels_the_service_exports(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    named = set()
    for title, expr in queries(dashboard):
        metrics = METRIC.findall(expr)
        assert metrics, f"{title}: {expr} names no metric of the service"
        for metric in metrics:
            assert metric in exported, f"{title}: {metric} is not exported (a scrape has {sorted(exported)})"
            named.add(metric)
        for metric, matchers in MATCHERS.findall(expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", matchers):
                assert label in exported[metric], f"{title}: {metric} has no label {label}"
        for grouping in GROUPING.findall(expr):
            for label in (name.strip() for name in grouping.split(",")):
                assert any(label in exported[m] for m in metrics), f"{title}: no metric of {expr} has {label}"
    # Every family the service exports is on the dashboard somewhere.
    families = {
        re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        for name in exported
        if name.startswith("inference_")
    }
    shown = {re.sub(r"_(bucket|sum|count|total|created)$", "", name) for name in named}
    assert families - shown == set(), "metrics the dashboard leaves out"
