"""Traces through the real web server, Redis and the model worker: a request's spans, the batch
span linked to every request it served, a continued traceparent, jobs, the JSON log line; and an
OTLP receiver that gets the spans of separate web and worker processes."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from werkzeug.serving import make_server

from harness.otlp import OtlpReceiver
from serving import tracing
from serving.logs import JsonFormatter
from serving.queue.messages import Heartbeat, ModelInfo
from serving.web.services import EXTENSION

from .support import colour_image, free_port, make_settings, pretend_worker, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
WEB_SPANS = {"read upload", "decode and resize", "enqueue", "wait for answers"}
BATCH_CHILDREN = {"assemble batch", "model", "write answers"}


@pytest.fixture
def spans():
    """Every span this process finishes, in memory, with tracing on at 100 % sampling."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler(1.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.shutdown()


class Web:
    """The app served over real HTTP (werkzeug's threaded server) in a thread of this process;
    the production servers run on gevent in their own processes (tests/test_waiting.py)."""

    def __init__(self, app):
        port = free_port()
        self.app, self.url = app, f"http://127.0.0.1:{port}"
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def predict(self, colour: str, headers: dict | None = None) -> requests.Response:
        return requests.post(
            self.url + "/predict",
            files={"image": ("i.png", colour_image(colour))},
            headers=headers,
            timeout=30,
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def web(colour_apps):
    served = Web(colour_apps(batch_wait_ms=0, client_timeout=20))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def paused_web(colour_apps, module_redis):
    """A server whose queue no worker takes from until the test starts one; a heartbeat that
    never takes work lets the web tier queue images meanwhile."""
    app = colour_apps(worker=False, batch_wait_ms=0, client_timeout=20)
    model = ModelInfo("colour", (32, 32), 3)
    pretend_worker(module_redis, app.config["QUEUE_NAME"], "asleep", Heartbeat(model, "h", 1, 8), ttl=60)
    served = Web(app)
    yield served
    served.stop()


def by_name(found: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in found if span.name == name]


def trace_of(found: tuple[ReadableSpan, ...], trace_id: int) -> list[ReadableSpan]:
    return [span for span in found if span.context.trace_id == trace_id]


def wait_for_spans(exporter: InMemorySpanExporter, names: list[str]) -> tuple[ReadableSpan, ...]:
    """The finished spans once every name in ``names`` is among them (as often as it appears)."""

    def done():
        found = exporter.get_finished_spans()
        return all(len(by_name(found, name)) >= names.count(name) for name in set(names)) and found

    return wait_until(done, 10, f"spans {names}")


def test_one_request_gives_one_trace_whose_batch_span_links_to_it(web, spans):
    response = web.predict("red")
    body = response.json()
    assert response.status_code == 200 and body["predictions"][0]["label"] == "red"
    found = wait_for_spans(spans, ["POST /predict", "batch", "queue wait"])

    (request_span,) = by_name(found, "POST /predict")
    assert request_span.parent is None and request_span.kind is SpanKind.SERVER
    assert request_span.attributes["http.route"] == "/predict"
    assert request_span.attributes["http.response.status_code"] == 200
    assert request_span.attributes["inference.request.id"] == body["request_id"]
    assert request_span.attributes["inference.batch.ids"] == (body["batch"]["id"],)
    trace = trace_of(found, request_span.context.trace_id)
    children = {
        span.name: span
        for span in trace
        if span.parent and span.parent.span_id == request_span.context.span_id
    }
    assert set(children) == WEB_SPANS | {"queue wait"}  # the last one is the worker's
    wait = children["wait for answers"]
    assert wait.attributes["inference.batch.ids"] == (body["batch"]["id"],)
    assert [event.attributes["inference.batch.id"] for event in wait.events] == [body["batch"]["id"]]
    assert response.headers["traceresponse"].startswith(
        f"00-{request_span.context.trace_id:032x}-{request_span.context.span_id:016x}-"
    )

    (batch,) = by_name(found, "batch")
    assert batch.context.trace_id != request_span.context.trace_id  # a trace of its own
    assert batch.kind is SpanKind.CONSUMER and batch.parent is None
    assert batch.attributes["inference.batch.id"] == body["batch"]["id"]
    assert batch.attributes["inference.batch.size"] == 1
    assert batch.attributes["inference.model.name"] == body["model"]["name"]
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (request_span.context.trace_id, request_span.context.span_id)
    ]
    assert batch.links[0].attributes["inference.reply_to"] == body["request_id"]
    batch_children = {
        span.name for span in found if span.parent and span.parent.span_id == batch.context.span_id
    }
    assert batch_children == BATCH_CHILDREN
    # And back: the request's wait and its queue wait link to the batch that served it.
    for span in (wait, children["queue wait"]):
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
    assert children["queue wait"].end_time <= batch.start_time + 1_000_000  # ends when taken


def test_two_requests_batched_together_give_two_traces_linked_from_one_batch(paused_web, spans):
    with ThreadPoolExecutor(2) as pool:
        sent = [pool.submit(paused_web.predict, colour) for colour in ("green", "blue")]
        queue = paused_web.app.extensions[EXTENSION].queue
        wait_until(lambda: queue.depth() == 2, 10, "both requests to be queued")
        paused_web.app.config["START_WORKER"]()
        bodies = [future.result().json() for future in sent]
    assert [body["predictions"][0]["label"] for body in bodies] == ["green", "blue"]
    assert bodies[0]["batch"]["id"] == bodies[1]["batch"]["id"]  # one batch served both
    found = wait_for_spans(spans, ["POST /predict", "POST /predict", "batch"])

    request_spans = by_name(found, "POST /predict")
    assert len({span.context.trace_id for span in request_spans}) == 2  # two traces
    (batch,) = [span for span in by_name(found, "batch") if span.attributes["inference.batch.size"] == 2]
    assert sorted((link.context.trace_id, link.context.span_id) for link in batch.links) == sorted(
        (span.context.trace_id, span.context.span_id) for span in request_spans
    )
    assert batch.attributes["inference.batch.id"] == bodies[0]["batch"]["id"]
    for request_span in request_spans:
        (wait,) = [s for s in trace_of(found, request_span.context.trace_id) if s.name == "wait for answers"]
        assert wait.attributes["inference.batch.ids"] == (batch.attributes["inference.batch.id"],)


def test_an_incoming_traceparent_is_continued(web, spans):
    response = web.predict("blue", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert response.status_code == 200
    found = wait_for_spans(spans, ["POST /predict", "queue wait", "batch"])
    (request_span,) = by_name(found, "POST /predict")
    assert f"{request_span.context.trace_id:032x}" == TRACE_ID
    assert f"{request_span.parent.span_id:016x}" == PARENT_ID and request_span.parent.is_remote
    assert {span.name for span in trace_of(found, int(TRACE_ID, 16))} == WEB_SPANS | {
        "POST /predict",
        "queue wait",
    }
    (batch,) = by_name(found, "batch")
    assert [f"{link.context.trace_id:032x}" for link in batch.links] == [TRACE_ID]


def test_an_unsampled_traceparent_is_not_recorded_nor_carried(web, spans):
    response = web.predict("red", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert response.status_code == 200 and "traceresponse" not in response.headers
    time.sleep(0.3)
    found = spans.get_finished_spans()
    assert [span.name for span in found if span.context.trace_id == int(TRACE_ID, 16)] == []
    assert all(not span.links for span in by_name(found, "batch"))  # nothing to link to


def test_a_jobs_images_have_spans_in_the_jobs_trace_linked_from_the_batch(web, spans):
    images = [("image", (f"{c}.png", colour_image(c))) for c in ("red", "green")]
    job = requests.post(web.url + "/jobs", files=images, timeout=30).json()
    done = requests.get(f"{web.url}/jobs/{job['id']}?wait=10", timeout=30).json()
    assert done["status"] == "done"
    found = wait_for_spans(spans, ["POST /jobs", "job image", "job image"])
    (submit,) = by_name(found, "POST /jobs")
    assert {span.name for span in found if span.parent and span.parent.span_id == submit.context.span_id} == {
        "read upload",
        "decode and resize",
        "enqueue",
        "job image",
    }
    job_images = by_name(found, "job image")
    assert sorted(span.attributes["inference.image.index"] for span in job_images) == [0, 1]
    assert {span.attributes["inference.reply_to"] for span in job_images} == {job["id"]}
    assert all(span.attributes["http.response.status_code"] == 200 for span in job_images)
    batch_ids = {span.attributes["inference.batch.id"] for span in job_images}
    batches = [span for span in by_name(found, "batch") if span.attributes["inference.batch.id"] in batch_ids]
    linked = [link for batch in batches for link in batch.links]
    assert {link.context.span_id for link in linked} == {submit.context.span_id}
    assert sum(link.attributes["inference.images"] for link in linked) == 2


def test_tracing_off_records_nothing_and_costs_a_shared_no_op(web):
    assert not tracing.enabled()
    assert tracing.span("anything") is tracing.span("else")  # one object, nothing made
    assert tracing.traceparent() is None  # so no message carries a trace
    response = web.predict("green", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert response.status_code == 200 and "traceresponse" not in response.headers


def test_configure_follows_the_settings_and_otel_sdk_disabled():
    assert not tracing.configure(make_settings(tracing="off"), environ={})
    assert not tracing.configure(make_settings(tracing="on"), environ={"OTEL_SDK_DISABLED": "true"})
    with pytest.raises(tracing.TracingError, match="zipkin"):
        tracing.configure(make_settings(tracing="on"), environ={"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(tracing.TracingError, match="HTTP"):
        tracing.configure(make_settings(tracing="on"), environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert not tracing.enabled()
    try:
        assert tracing.configure(make_settings(tracing="on"), environ={"OTEL_TRACES_EXPORTER": "none"})
        assert tracing.enabled() and tracing.span("x") is not tracing.span("x")
        with tracing.span("root") as span:
            context = span.get_span_context()
            assert tracing.traceparent() == f"00-{context.trace_id:032x}-{context.span_id:016x}-03"
    finally:
        tracing.shutdown()


def test_the_sampler_follows_parents_and_records_a_batch_serving_a_sampled_request():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler(0.0))  # no new trace is recorded by chance
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        with tracing.span("new root"):
            assert tracing.traceparent() is None
        sampled = tracing.link(f"00-{TRACE_ID}-{PARENT_ID}-01")
        unsampled = tracing.link(f"00-{TRACE_ID}-{PARENT_ID}-00")
        with tracing.span("batch of unsampled", links=[unsampled]):
            pass
        with tracing.span("batch of sampled", links=[unsampled, sampled]):
            pass
        with tracing.span("child", context=tracing.context_from_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-01")):
            pass
    finally:
        tracing.shutdown()
    assert [span.name for span in exporter.get_finished_spans()] == ["batch of sampled", "child"]


def test_one_json_log_line_per_request_names_its_trace_and_batch(web, spans, caplog):
    with caplog.at_level(logging.INFO, logger="serving.web.request_log"):
        response = web.predict("red", headers={"X-Request-ID": "client-7"})
        body = response.json()
    # The line is written before the response is sent.
    (record,) = [
        r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == body["request_id"]
    ]
    line = json.loads(JsonFormatter().format(record))
    trace_id = response.headers["traceresponse"].split("-")[1]
    assert line["message"] == "request" and line["level"] == "INFO"
    assert {
        key: line[key] for key in ("request_id", "client_id", "trace_id", "route", "status", "model")
    } == {
        "request_id": body["request_id"],
        "client_id": "client-7",
        "trace_id": trace_id,
        "route": "/predict",
        "status": 200,
        "model": body["model"]["name"],
    }
    assert line["batch_ids"] == [body["batch"]["id"]] and line["images"] == 1
    assert set(line["timings_ms"]) == {"read", "decode", "enqueue", "wait", "queued", "model"}
    assert line["ms"] >= line["timings_ms"]["wait"] > 0 and line["timings_ms"]["model"] > 0
    text = record.getMessage()  # the text line stays as it was, with the trace id added
    assert f"id={body['request_id']}" in text and f"batch={body['batch']['id']}" in text
    assert text.endswith(f"trace={trace_id}")


# A real OTLP receiver, and separate web and worker processes ------------------------------
@pytest.fixture
def receiver():
    with OtlpReceiver() as server:
        yield server


@pytest.mark.slow
def test_an_otlp_receiver_gets_one_trace_across_the_web_and_worker_processes(serve, receiver):
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    web = serve(
        "--role", "web", "--tracing", "on", "--log-format", "json",
        model=False, queue="otlpq", ready_path="/healthz", env={**otlp, "OTEL_SERVICE_NAME": "web"},
    )  # fmt: skip
    serve("--role", "worker", "--tracing", "on", queue="otlpq", ready_path=None,
          env={**otlp, "OTEL_SERVICE_NAME": "worker"})  # fmt: skip
    wait_until(lambda: requests.get(web.url + "/readyz", timeout=2).status_code == 200, 120, "the worker")
    response = web.predict(colour_image("green"), headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    body = response.json()
    assert response.status_code == 200 and body["predictions"][0]["label"] == "green"

    def received():
        found = receiver.spans()
        names = {(service, span.name) for service, span in found}
        return (
            found
            if {("web", "wait for answers"), ("worker", "batch"), ("worker", "queue wait")} <= names
            else None
        )

    found = wait_until(received, 20, "the spans of both processes at the receiver")
    in_trace = {(service, span.name) for service, span in found if span.trace_id.hex() == TRACE_ID}
    assert in_trace == {("web", "POST /predict"), ("worker", "queue wait")} | {
        ("web", name) for name in WEB_SPANS
    }
    (request_span,) = [span for service, span in found if span.name == "POST /predict"]
    assert request_span.parent_span_id.hex() == PARENT_ID
    (batch,) = [span for service, span in found if span.name == "batch"]
    assert [(link.trace_id.hex(), link.span_id) for link in batch.links] == [(TRACE_ID, request_span.span_id)]
    attributes = {a.key: a.value for a in batch.attributes}
    assert attributes["inference.batch.id"].string_value == body["batch"]["id"]
    assert attributes["inference.batch.size"].int_value == 1

    web.stop()
    lines = [json.loads(line) for line in web.log().splitlines() if line.startswith("{")]
    (line,) = [line for line in lines if line.get("request_id") == body["request_id"]]
    assert line["trace_id"] == TRACE_ID and line["batch_ids"] == [body["batch"]["id"]]
    assert line["status"] == 200 and line["route"] == "/predict" and line["timings_ms"]["model"] >= 0
