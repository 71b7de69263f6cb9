"""The JSON API: /predict, the health probes and the OpenAPI description."""

from __future__ import annotations

import numpy as np
import redis
from flask import Blueprint, request

from helpers import ImageError

from . import request_log
from .classify import Classification, classify, prepare_images
from .openapi import openapi_spec
from .responses import error_response, json_response
from .services import services

blueprint = Blueprint("api", __name__)


def uploaded_images() -> list[bytes]:
    upload = request.files.get("image")
    if upload is None:
        raise ImageError("Send the image as a multipart/form-data file field named 'image'.")
    return [upload.read()]


def run_classification(images: list[np.ndarray], top_k: int) -> Classification:
    """Queue prepared images and wait; the request log learns the request id and batches."""
    serving = services()
    result = classify(serving.queue, serving.settings, images, top_k)
    request_log.note(request_id=result.request_id, batch=",".join(result.batch_ids) or None)
    return result


@blueprint.post("/predict")
def predict():
    serving = services()
    images = prepare_images(
        uploaded_images(), serving.workers.model(), serving.settings.max_image_pixels, serving.decode_budget
    )
    result = run_classification(images, serving.settings.top_k)
    body = result.body
    if result.status == 200:
        body.setdefault("timings_ms", {})["total"] = request_log.elapsed_ms()
    return json_response(body, result.status)


@blueprint.get("/healthz")
def healthz():
    return json_response({"alive": True})


@blueprint.get("/readyz")
def readyz():
    queue = services().queue
    try:
        workers = queue.live_workers()
        depth = queue.depth()
    except redis.RedisError:
        return error_response(503, "Redis is unreachable.")
    if not workers:
        return error_response(503, "No model worker has sent a heartbeat recently.")
    model = next(iter(workers.values())).model  # one model per queue; its runtime and precision
    return json_response(
        {"ready": True, "workers": len(workers), "queue_depth": depth, "model": model.as_dict()}
    )


@blueprint.get("/openapi.json")
def openapi():
    return json_response(openapi_spec(services().settings))
