"""The OpenAPI 3 description of the HTTP API, served at /openapi.json.

Built from the running settings, so the limits it states (upload size, images, deadline) are the
real ones. tests/test_openapi.py fuzzes the live server against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from serving.settings import LONGEST_JOB_WAIT_SECONDS, Settings
from serving.web.openapi_schemas import SCHEMAS, TOP_K, ref


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _errors(settings: Settings, shape: str = "Error", **statuses: str) -> dict[str, Any]:
    """The error responses of an operation: those every route has, and ``statuses``."""
    retry_after = {"Retry-After": ref("RetryAfter", "headers")}
    descriptions = {
        "405": "The path does not take this method; the Allow header lists those it takes.",
        "500": "An unexpected failure (e.g. the model failed on this image's batch).",
        **{code.removeprefix("s"): text for code, text in statuses.items()},
    }
    responses = {code: _json(text, ref(shape)) for code, text in descriptions.items()}
    responses["405"]["headers"] = {"Allow": {"schema": {"type": "string"}, "description": "e.g. POST"}}
    if "503" in responses:
        responses["503"]["headers"] = retry_after
    return responses


def _classify_errors(settings: Settings, shape: str = "Error") -> dict[str, Any]:
    return _errors(
        settings,
        shape,
        s400=f"No image, an unreadable or unaccepted image, more than {settings.max_image_pixels} "
        f"pixels, more than {settings.max_images_per_request} images, bad base64 or JSON, or a bad top_k.",
        s413=f"The body is larger than {settings.max_upload_bytes} bytes (or a form of too many parts).",
        s415="A Content-Type the server does not take; the error lists those it takes.",
        s503="Redis is unreachable or slow, the queue is full, no model worker is running, or the decode "
        "memory budget is taken.",
        s504=f"No result within {settings.client_timeout:g} s; the images were withdrawn from the queue.",
    )


MODEL_QUERY = [
    {
        "name": "model",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "The model to ask (GET /models lists them); unset: the default model.",
    },
    {
        "name": "version",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "The model's version; unset: its current version.",
    },
]
MODEL_PATH = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION_PATH = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
UNKNOWN_MODEL = "No such model or version: the error lists those this server serves."


def _models_paths(settings: Settings) -> dict[str, Any]:
    listing = {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "versions"],
                    "properties": {
                        "name": {"type": "string"},
                        "current": {"type": "string", "nullable": True},
                        "versions": {"type": "array", "items": {"type": "object"}},
                        "canary": {"type": "object"},
                    },
                },
            }
        },
    }
    predict = _predict(settings)["post"]
    by_name = {**predict, "operationId": "predict_model", "summary": "Classify with a named model"}
    by_name["parameters"] = [p for p in predict["parameters"] if p["in"] != "query"] + [MODEL_PATH]
    by_name["responses"] = {**predict["responses"], "404": _json(UNKNOWN_MODEL, ref("Error"))}
    by_version = {
        **by_name,
        "operationId": "predict_model_version",
        "summary": "Classify with a model version",
    }
    by_version["parameters"] = [*by_name["parameters"], VERSION_PATH]
    return {
        "/models": _get(
            "models",
            "The models served, their versions, and the current version of each",
            _json("The catalogue.", listing),
            settings,
            s503="Redis is unreachable.",
        ),
        "/models/{name}/predict": {"post": by_name},
        "/models/{name}/versions/{version}/predict": {"post": by_version},
    }


def _predict(settings: Settings) -> dict[str, Any]:
    request_id = {
        "X-Request-ID": {
            "schema": {"type": "string"},
            "description": "The client's X-Request-ID if it sent one, else the server's.",
        }
    }
    image = {"type": "string", "format": "binary", "description": "JPEG, PNG, GIF, WebP, BMP, TIFF or AVIF."}
    return {
        "post": {
            "operationId": "predict",
            "summary": "Classify one or several images",
            "parameters": [
                {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Your own id for this request; echoed back and logged.",
                },
                {"name": "top_k", "in": "query", "required": False, "schema": TOP_K},
                *MODEL_QUERY,
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {
                                    "oneOf": [
                                        image,
                                        {
                                            "type": "array",
                                            "items": image,
                                            "maxItems": settings.max_images_per_request,
                                        },
                                    ],
                                    "description": "One file field named image, or several (a list).",
                                },
                                "top_k": TOP_K,
                                "model": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        },
                        "encoding": {"image": {"contentType": "image/*, application/octet-stream"}},
                    },
                    "image/*": {"schema": image},
                    "application/octet-stream": {"schema": image},
                    "application/json": {"schema": ref("ImagesJson")},
                },
            },
            "responses": {
                "200": _json(
                    "The top predictions: one result, or a list of them in upload order.",
                    {"oneOf": [ref("PredictionResult"), ref("PredictionResults")]},
                    request_id,
                ),
                **_classify_errors(settings),
                "404": _json(UNKNOWN_MODEL, ref("Error")),
            },
        }
    }


def _jobs_paths(settings: Settings) -> dict[str, Any]:
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The id POST /jobs answered: <model>.<version>.<32 hex digits>.",
    }
    wait = {
        "name": "wait",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": LONGEST_JOB_WAIT_SECONDS},
        "description": (
            f"Seconds to wait for the job to end (long-poll), at most {LONGEST_JOB_WAIT_SECONDS:g}."
        ),
    }
    missing = "No such job: never submitted, deleted, or its result expired."
    submit = _predict(settings)["post"]
    accepted = _json(
        "Queued: poll the Location.",
        ref("Job"),
        {"Location": {"schema": {"type": "string"}, "description": "/jobs/<id>"}},
    )
    return {
        "/jobs": {
            "post": {
                **submit,
                "operationId": "submit_job",
                "summary": "Submit images now, fetch the answer later (the bulk lane)",
                "responses": {
                    "202": accepted,
                    **{k: v for k, v in submit["responses"].items() if k != "200"},
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "operationId": "job_status",
                "summary": "A job's state, and its answer once it ends",
                "parameters": [job_id, wait],
                "responses": {
                    "200": _json("The job.", ref("Job")),
                    **_errors(settings, s400="A bad wait.", s404=missing, s503="Redis is unreachable."),
                },
            },
            "delete": {
                "operationId": "delete_job",
                "summary": "Cancel a job (its queued images are never computed) or delete its result",
                "parameters": [job_id],
                "responses": {
                    "200": _json("Cancelled or deleted.", ref("Job")),
                    **_errors(settings, s404=missing, s503="Redis is unreachable."),
                },
            },
        },
    }


def _get(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    settings: Settings,
    shape: str = "Error",
    **errors: str,
) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "responses": {"200": ok, **_errors(settings, shape, **errors)},
        }
    }


def _v2_paths(settings: Settings, model_name: str | None) -> dict[str, Any]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "A model the workers serve (GET /models lists them).",
        **({"example": model_name} if model_name else {}),
    }
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": "1",
    }
    object_ok = {"type": "object"}
    unknown = "No such model (or version): the error lists those this server serves."
    busy = "Redis is unreachable or no model worker is alive."
    infer = {
        "post": {
            "operationId": "v2_infer",
            "summary": "Open Inference Protocol (KServe v2) inference",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("InferRequest")}},
            },
            "responses": {
                "200": {
                    "description": "The outputs: JSON, or the JSON header and binary tensors with "
                    "Inference-Header-Content-Length.",
                    "content": {
                        "application/json": {"schema": ref("InferResponse")},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **_classify_errors(settings, "ProtocolError"),
                "404": _json(unknown, ref("ProtocolError")),
            },
        }
    }
    paths: dict[str, Any] = {
        "/v2": _get(
            "v2_server_metadata",
            "Server metadata",
            _json("Name, version, extensions.", object_ok),
            settings,
            "ProtocolError",
        ),
        "/v2/health/live": _get("v2_live", "Liveness", _json("Alive.", object_ok), settings, "ProtocolError"),
        "/v2/health/ready": _get(
            "v2_ready", "Readiness", _json("Ready.", object_ok), settings, "ProtocolError", s503=busy
        ),
        "/v2/repository/index": {
            "post": {
                "operationId": "v2_repository_index",
                "summary": "Every model version and its state (READY or UNAVAILABLE)",
                "responses": {
                    "200": _json("The index.", {"type": "array", "items": object_ok}),
                    **_errors(settings, "ProtocolError", s503="Redis is unreachable."),
                },
            }
        },
    }
    for prefix, parameters in (
        ("/v2/models/{name}", [name]),
        ("/v2/models/{name}/versions/{version}", [name, version]),
    ):
        suffix = "_version" if len(parameters) == 2 else ""
        paths[prefix] = _get(
            f"v2_model_metadata{suffix}",
            "Model metadata: inputs and outputs",
            _json("The model's tensors.", object_ok),
            settings,
            "ProtocolError",
            s404=unknown,
            s503=busy,
        )
        paths[prefix + "/ready"] = _get(
            f"v2_model_ready{suffix}",
            "Model readiness",
            _json("Ready.", object_ok),
            settings,
            "ProtocolError",
            s404=unknown,
            s503=busy,
        )
        paths[prefix + "/infer"] = {"post": {**infer["post"], "operationId": f"v2_infer{suffix}"}}
        for operation in (paths[prefix], paths[prefix + "/ready"], paths[prefix + "/infer"]):
            next(iter(operation.values()))["parameters"] = parameters
    return paths


def openapi_spec(
    settings: Settings, model_name: str | None = None, model_names: list[str] | None = None
) -> dict[str, Any]:
    """The document; ``model_name`` (the default model, when known) is the example of the model
    paths' name, and ``model_names`` (the models served) are listed in the description."""
    alive = {
        "type": "object",
        "required": ["alive"],
        "properties": {"alive": {"type": "boolean", "enum": [True]}},
    }
    ready = {
        "type": "object",
        "required": ["ready", "workers", "queue_depth", "model", "models", "redis"],
        "properties": {
            "ready": {"type": "boolean", "enum": [True]},
            "models": {
                "type": "object",
                "description": "Per model: its current version, whether it is ready, and per version "
                "its live workers and queue depths.",
                "additionalProperties": {"type": "object"},
            },
            "workers": {"type": "integer", "minimum": 1},
            "queue_depth": {"type": "integer", "minimum": 0},
            "model": ref("Model"),
            "redis": {
                "type": "object",
                "description": "The Redis primary this process talks to, and how often it moved.",
                "required": ["primary", "via", "primary_changes"],
                "properties": {
                    "primary": {"type": "string", "nullable": True, "description": "host:port"},
                    "via": {"type": "string", "enum": ["redis", "sentinel", "cluster"]},
                    "primary_changes": {"type": "integer", "minimum": 0},
                },
            },
        },
    }
    metrics = {
        "description": "Metrics; see README for their names and meaning.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    document = {
        "openapi": "3.0.3",
        "info": {
            "title": "Keras image classification API",
            "version": "2.0.0",
            "description": (
                "Images are queued in Redis and classified in batches by model workers. Every error is JSON "
                '`{"success": false, "error": "..."}` (the /v2 routes: `{"error": "..."}`). A path called '
                "with a method it does not take answers 405 with an Allow header."
                + (f" Models served: {', '.join(model_names)}." if model_names else "")
            ),
        },
        "paths": {
            "/predict": _predict(settings),
            "/healthz": _get(
                "healthz", "Liveness: the web process answers", _json("Alive.", alive), settings
            ),
            "/readyz": {
                "get": {
                    **_get(
                        "readyz",
                        "Readiness: Redis answers and a model worker is alive (?model=NAME: its worker)",
                        _json("Ready to classify.", ready),
                        settings,
                        s400="A version without the model it belongs to.",
                        s404=UNKNOWN_MODEL,
                        s503="Redis is unreachable or no model worker has sent a heartbeat recently.",
                    )["get"],
                    "parameters": MODEL_QUERY,
                }
            },
            **_models_paths(settings),
            "/metrics": _get("metrics", "Prometheus metrics (text exposition format)", metrics, settings),
            **_jobs_paths(settings),
            **_v2_paths(settings, model_name),
        },
        "components": {
            "schemas": SCHEMAS,
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
    }
    if settings.auth == "keys":
        _require_keys(document)
    return document


OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")


def _require_keys(document: dict[str, Any]) -> None:
    """--auth keys: a bearer key on every operation but the probes and /metrics, and the
    answers a key can get: 401, 403 (a model it may not use) and 429 (over a limit)."""
    document["components"]["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "python -m serving.tenants add"}
    }
    document["security"] = [{"apiKey": []}]
    retry_after = {"Retry-After": ref("RetryAfter", "headers")}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            shape = "ProtocolError" if path.startswith("/v2") else "Error"
            operation["responses"].update(
                {
                    "401": _json("No API key, or one that is unknown or revoked.", ref(shape)),
                    "403": _json("The key may not use this model.", ref(shape)),
                    "429": _json(
                        "The key's tenant is over its rate, its queued images or its open jobs.",
                        ref(shape),
                        retry_after,
                    ),
                }
            )
