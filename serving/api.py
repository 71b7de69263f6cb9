"""The JSON API: /predict, the health probes and the OpenAPI description."""

from __future__ import annotations

import numpy as np
import redis
from flask import Blueprint

from . import request_log
from .classify import Classification, classify, prepare_images
from .openapi import openapi_spec
from .responses import ServiceUnavailable, json_response
from .services import Services, services
from .uploads import Uploads, checked_top_k, read_uploads

blueprint = Blueprint("api", __name__)


def prepared(serving: Services, uploads: Uploads) -> tuple[list[np.ndarray], int]:
    """The uploads as model input, and the top_k to answer with; any bad image fails them all."""
    model = serving.workers.model()
    top_k = checked_top_k(uploads.top_k, serving.settings.top_k, model.classes)
    images = prepare_images(uploads.images, model, serving.settings.max_image_pixels, serving.decode_budget)
    return images, top_k


def run_classification(images: list[np.ndarray], top_k: int, as_list: bool = False) -> Classification:
    """Queue prepared images and wait; the request log learns the request id and batches."""
    serving = services()
    result = classify(serving.queue, serving.settings, images, top_k, as_list)
    request_log.note(request_id=result.request_id, batch=",".join(result.batch_ids) or None)
    return result


@blueprint.post("/predict")
def predict():
    serving = services()
    uploads = read_uploads(serving.settings.max_images_per_request)
    images, top_k = prepared(serving, uploads)
    result = run_classification(images, top_k, uploads.as_list)
    body = result.body
    if result.status == 200:
        body.setdefault("timings_ms", {})["total"] = request_log.elapsed_ms()
    return json_response(body, result.status)


@blueprint.get("/healthz")
def healthz():
    return json_response({"alive": True})


def ready_state() -> dict:
    """What /readyz answers when Redis answers and a model worker is alive; else 503."""
    queue = services().queue
    try:
        workers = queue.live_workers()
        depth = queue.depth()
    except redis.RedisError:
        raise ServiceUnavailable("Redis is unreachable.") from None
    if not workers:
        raise ServiceUnavailable("No model worker has sent a heartbeat recently.")
    model = next(iter(workers.values())).model  # one model per queue; its runtime and precision
    return {"ready": True, "workers": len(workers), "queue_depth": depth, "model": model.as_dict()}


@blueprint.get("/readyz")
def readyz():
    return json_response(ready_state())


@blueprint.get("/openapi.json")
def openapi():
    serving = services()
    try:
        model_name: str | None = serving.workers.model().name
    except (ServiceUnavailable, redis.RedisError):  # the document does not need a worker
        model_name = None
    return json_response(openapi_spec(serving.settings, model_name))
