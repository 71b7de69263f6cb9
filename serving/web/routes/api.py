"""The JSON API: /predict, the health probes and the OpenAPI description."""

from __future__ import annotations

import redis
from flask import Blueprint, Response

from serving.web import request_log
from serving.web.classify import prepare_uploads, run_classification
from serving.web.openapi import openapi_spec
from serving.web.responses import ServiceUnavailable, json_response
from serving.web.services import services
from serving.web.uploads import read_uploads
from serving.web.worker_directory import ready_state

blueprint = Blueprint("api", __name__)


@blueprint.post("/predict")
def predict() -> Response:
    result = run_classification(prepare_uploads(services(), read_uploads()))
    body = result.body
    if result.status == 200:
        body.setdefault("timings_ms", {})["total"] = request_log.elapsed_ms()
    return json_response(body, result.status)


@blueprint.get("/healthz")
def healthz() -> Response:
    return json_response({"alive": True})


@blueprint.get("/readyz")
def readyz() -> Response:
    return json_response(ready_state(services().queue))


@blueprint.get("/openapi.json")
def openapi() -> Response:
    serving = services()
    try:
        model_name: str | None = serving.workers.model().name
    except (ServiceUnavailable, redis.RedisError):  # the document does not need a worker
        model_name = None
    return json_response(openapi_spec(serving.settings, model_name))
