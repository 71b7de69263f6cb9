"""Submit now, fetch later: asynchronous jobs on the bulk lane of the same queue.

    POST   /jobs            the same inputs as /predict; 202 at once, Location: /jobs/<id>
    GET    /jobs/<id>       queued | running | done | failed | expired; ?wait=S long-polls
    GET    /jobs/<id>/events  Server-Sent Events: one per finished image, then the whole result
    DELETE /jobs/<id>       cancel a job (its queued images are never computed) or delete its result

A job's images go to the bulk lane, which workers take only to top up a batch after the
interactive lane, so bulk work never makes an interactive request wait for more than one batch.
Job state lives only in Redis: any web server answers for any job, and a restart loses nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, request, stream_with_context

from serving import tracing
from serving.queue import JobSpec, RedisQueue
from serving.queue.keys import DEFAULT_TENANT
from serving.queue.messages import BULK, Answer, image_messages
from serving.queue.redis_queue import TenantQueueFull
from serving.settings import LONGEST_JOB_WAIT_SECONDS
from serving.web import request_log
from serving.web.auth import current_tenant, refuse
from serving.web.classify import compose, new_request_id, prepare_uploads, tenant_queue_full
from serving.web.disconnect import ClientGone, abort_on_disconnect
from serving.web.responses import ApiError, BadRequest, ServiceUnavailable, json_response
from serving.web.server_stop import ServerStopping, ends_when_server_stops, stopping
from serving.web.services import services
from serving.web.uploads import read_uploads

blueprint = Blueprint("jobs", __name__)

# A job's id names the model version whose queue holds it: <model>.<version>.<32 hex digits>.
JOB_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,63})\.([1-9][0-9]{0,8})\.([0-9a-f]{32})$")
BULK_FULL = "The server is busy: the job queue is full. Try again shortly."
FINAL = ("done", "failed", "expired")
STREAM_ID = re.compile(r"^\d+(-\d+)?$")
KEEP_ALIVE_SECONDS = 10.0  # a comment this often keeps an event stream open through proxies


class JobNotFound(ApiError):
    status = 404

    def __init__(self, job_id: str, why: str = "it never existed, was deleted, or its result expired"):
        super().__init__(f"No job {job_id}: {why}.")


@blueprint.post("/jobs")
def submit() -> Response:
    serving = services()
    settings = serving.settings
    prepared = prepare_uploads(serving, read_uploads())
    queue, model = prepared.route.queue, prepared.route.model
    now = time.time()
    # The id says which version's queue holds the job: any web server finds it from the id alone.
    job_id = f"{model.name}.{model.version}.{new_request_id()}"
    tenant = prepared.tenant
    job = JobSpec(
        job_id,
        now,
        now + settings.job_timeout,
        prepared.top_k,
        prepared.as_list,
        settings.job_ttl,
        tenant.name,
    )
    # Each image's span in the worker is a child of this request's: the job's trace follows it.
    trace = tracing.traceparent()
    messages = image_messages(job.id, prepared.images, prepared.top_k, now, job.deadline, BULK, trace)
    refusal = serving.limits.open_job(tenant, job_id, job.deadline, _has_ended)
    if refusal:
        raise refuse(tenant, refusal)
    with request_log.step("enqueue", "enqueue", {"inference.lane": BULK, "inference.images": len(messages)}):
        try:
            queued = queue.create_job(job, messages, settings.max_job_queue_length, tenant.limits.max_queued)
        except TenantQueueFull as exc:
            serving.limits.close_job(tenant, job_id)
            raise refuse(tenant, tenant_queue_full(exc.cap)) from None
        except Exception:
            serving.limits.close_job(tenant, job_id)
            raise
        if not queued:
            serving.limits.close_job(tenant, job_id)
            raise ServiceUnavailable(BULK_FULL)
    request_log.note(request_id=job_id, images=len(messages))
    body = {
        "id": job_id,
        "status": "queued",
        "images": len(messages),
        "model": model.name,
        "version": model.version,
    }
    return json_response(body, 202, {"Location": f"/jobs/{job_id}"})


@blueprint.get("/jobs/<job_id>")
def status(job_id: str) -> Response:
    queue = _queue_of(job_id)
    state = _state(job_id)
    wait = _wait_seconds()
    if wait and state["status"] not in FINAL:
        try:
            with abort_on_disconnect(request.environ), ends_when_server_stops():
                queue.wait_job(job_id, wait)
        except ClientGone:  # nobody to answer; the blocked call left Redis with its connection
            request_log.note(client="gone")
            return json_response({"success": False, "error": "The client closed the connection."}, 499)
        except ServerStopping:
            pass  # answered at once with the state it has: the client asks again elsewhere
        state = _state(job_id)
    return json_response(state)


@blueprint.get("/jobs/<job_id>/events")
def events(job_id: str) -> Response:
    """The job's progress as Server-Sent Events, fed from its Redis stream (XREAD BLOCK, no
    polling): ``event: image`` per finished image (index, status, top label), then ``event:
    result`` with the body GET /jobs/<id> gives once it ends. Each event's ``id:`` is its stream
    id, so a client that reconnects with ``Last-Event-ID`` misses nothing. A stream is bounded
    like a long-poll: after LONGEST_JOB_WAIT_SECONDS it ends (the client reconnects), and a
    comment every few seconds keeps proxies from closing it."""
    state = _state(job_id)  # 404 for a job that does not exist
    queue = _queue_of(job_id)
    after = request.headers.get("Last-Event-ID") or request.args.get("last") or "0"
    if not STREAM_ID.match(after):
        raise BadRequest(f"Last-Event-ID must be a stream id such as 1700000000000-0, not {after!r}.")
    environ = request.environ

    def generate() -> Iterator[str]:
        last = after
        yield "retry: 2000\n\n"
        if state["status"] in FINAL and last == "0" and not queue.job_events(job_id, "0", 0.001):
            yield _event("result", state, None)  # ended before its stream existed (or it expired)
            return
        give_up = time.monotonic() + LONGEST_JOB_WAIT_SECONDS
        while time.monotonic() < give_up and not stopping():
            try:
                with abort_on_disconnect(environ), ends_when_server_stops():
                    found = queue.job_events(
                        job_id, last, min(KEEP_ALIVE_SECONDS, give_up - time.monotonic())
                    )
            except (ClientGone, ServerStopping):  # a stopping server: it reconnects elsewhere
                return
            if not found:
                if queue.job_state(job_id) is None:
                    return  # deleted, or its result expired
                yield ": keep-alive\n\n"
                continue
            for entry, fields in found:
                last = entry
                if "final" in fields:
                    final = _state(job_id) if fields["final"] != b"deleted" else {"status": "deleted"}
                    yield _event("result", final, entry)
                    return
                answer = Answer.from_bytes(fields["answer"], job_id, BULK)
                predictions = answer.body.get("predictions") or [{}]
                image = {"index": answer.index, "status": answer.status, "label": predictions[0].get("label")}
                if not answer.ok:
                    image["error"] = answer.error
                yield _event("image", image, entry)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: pass each event on
    return Response(stream_with_context(generate()), mimetype="text/event-stream", headers=headers)


def _event(kind: str, data: dict[str, Any], entry: str | None) -> str:
    head = f"id: {entry}\n" if entry else ""
    return f"{head}event: {kind}\ndata: {orjson.dumps(data).decode()}\n\n"


@blueprint.delete("/jobs/<job_id>")
def delete(job_id: str) -> Response:
    queue = _queue_of(job_id)
    tenant = current_tenant()
    fields = queue.cancel_job(job_id, tenant.name)  # another tenant's job is no job at all
    if not fields:
        raise JobNotFound(job_id)
    services().limits.close_job(tenant, job_id)
    images, answered = int(fields["images"]), int(fields["answered"])
    if fields["status"] in FINAL:
        return json_response({"id": job_id, "status": "deleted", "images": images})
    return json_response(
        {
            "id": job_id,
            "status": "cancelled",
            "images": images,
            "done": answered,
            "cancelled": images - answered,
        }
    )


def _queue_of(job_id: str) -> RedisQueue:
    """The queue that holds the job: its model version's, named by the id."""
    found = JOB_ID.match(job_id)
    if not found:  # not one this server made: 404 without asking Redis
        raise JobNotFound(job_id, "job ids look like <model>.<version>.<32 hexadecimal digits>")
    model, version, _ = found.groups()
    models = services().models
    served = models.state_knowing(model).versions.get(model, {}).get(version)
    if served is None:
        raise JobNotFound(job_id, f"no version {version} of model {model!r} is known")
    return models.queue(served.queue)


def _has_ended(job_id: str) -> bool:
    """Whether a job no longer counts as open: ended, deleted, or its result expired."""
    try:
        found = _queue_of(job_id).job_state(job_id)
    except JobNotFound:
        return True
    return found is None or found[0]["status"] not in ("queued", "running")


def _wait_seconds() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = float("nan")
    if not 0 <= wait <= LONGEST_JOB_WAIT_SECONDS:  # NaN fails this too
        raise BadRequest(f"wait must be a number of seconds up to {LONGEST_JOB_WAIT_SECONDS:g}, not {raw!r}.")
    return wait


def _state(job_id: str) -> dict[str, Any]:
    """The job as GET answers it: its progress, then the same body /predict gives once it ends."""
    queue = _queue_of(job_id)
    found = queue.job_state(job_id)
    # Another tenant's job is answered as no job at all: its existence is not for others to learn.
    if found is None or found[0].get("tenant", DEFAULT_TENANT) != current_tenant().name:
        raise JobNotFound(job_id)
    fields, results = found
    status, images, answered = fields["status"], int(fields["images"]), int(fields["answered"])
    deadline = float(fields["deadline"])
    if status in ("queued", "running") and time.time() > deadline:
        status = "expired"  # no worker has reached it yet to say so
    body: dict[str, Any] = {
        "id": job_id,
        "status": status,
        "images": images,
        "done": answered,
        "created": float(fields["created"]),
        "deadline": deadline,
    }
    if status == "expired":
        body.update(
            success=False,
            error=f"The job's images were not computed within its {deadline - float(fields['created']):g} s.",
        )
    elif status in ("done", "failed"):
        answers = [Answer.from_bytes(results[index], job_id, BULK) for index in sorted(results)]
        body.update(compose(answers, fields["as_list"] == "1")[1])
        body["finished"] = float(fields["finished"])
    return body
