"""The JSON API: /predict, the models, the health probes and the OpenAPI description."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, request

from serving.web import request_log
from serving.web.auth import visible_models
from serving.web.classify import prepare_uploads, run_classification
from serving.web.model_directory import ready_state
from serving.web.openapi import openapi_spec
from serving.web.responses import ApiError, ServiceUnavailable, json_response
from serving.web.services import services
from serving.web.uploads import read_uploads

blueprint = Blueprint("api", __name__)


@blueprint.post("/predict")
@blueprint.post("/models/<name>/predict")
@blueprint.post("/models/<name>/versions/<version>/predict")
def predict(name: str | None = None, version: str | None = None) -> Response:
    # The model named in the path, the query (?model=, ?version=) or the body (read_uploads).
    result = run_classification(prepare_uploads(services(), read_uploads()))
    body = result.body
    if result.status == 200:
        body.setdefault("timings_ms", {})["total"] = request_log.elapsed_ms()
    return json_response(body, result.status)


@blueprint.get("/models")
def models() -> Response:
    """Every model served, its versions, and which version answers requests that name none."""
    state = services().models.state()
    return json_response(
        {
            "models": [
                {
                    "name": name,
                    "current": state.current(name),
                    "versions": [
                        {"version": number, "live": state.is_live(name, number), **served.model.as_dict()}
                        for number, served in sorted(
                            state.versions[name].items(), key=lambda item: int(item[0])
                        )
                    ],
                    **({"canary": vars(state.canary[name])} if name in state.canary else {}),
                }
                for name in visible_models(state.models())
            ]
        }
    )


def _by_version(item: tuple[str, object]) -> int:
    return int(item[0])


@blueprint.get("/healthz")
def healthz() -> Response:
    return json_response({"alive": True})


@blueprint.get("/readyz")
def readyz() -> Response:
    """Ready when a worker serves some model (``?model=NAME[&version=V]``: that one)."""
    return json_response(
        ready_state(services().models, request.args.get("model") or None, request.args.get("version") or None)
    )


@blueprint.get("/openapi.json")
def openapi() -> Response:
    serving = services()
    try:
        state = serving.models.state()
        model_names = state.models()
    except redis.RedisError:  # the document does not need a worker
        model_names = []
    try:
        default: str | None = serving.models.default_name()
    except (ApiError, ServiceUnavailable, redis.RedisError):
        default = None
    return json_response(openapi_spec(serving.settings, default, model_names))
