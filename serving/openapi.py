"""The OpenAPI 3 description of the HTTP API, served at /openapi.json.

Built from the running settings, so the limits it states (upload size, deadline) are the real ones.
tests/test_openapi.py fuzzes the live server against it.
"""

from __future__ import annotations

from settings import Settings


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _error(description: str, retry_after: bool = False) -> dict:
    response = {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", "Error")}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": _ref("headers", "RetryAfter")}
    return response


def _json(description: str, schema: dict, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _schemas() -> dict:
    number = {"type": "number", "minimum": 0}
    return {
        "Error": {
            "type": "object",
            "required": ["success", "error"],
            "properties": {
                "success": {"type": "boolean", "enum": [False]},
                "error": {"type": "string", "description": "A plain sentence saying what went wrong."},
                "request_id": {"type": "string", "description": "Present once the image was queued."},
            },
        },
        "Prediction": {
            "type": "object",
            "required": ["label", "probability", "class_id"],
            "properties": {
                "label": {"type": "string"},
                "probability": {"type": "number", "minimum": 0, "maximum": 1},
                "class_id": {"type": "integer", "minimum": 0, "description": "The model's output index."},
                "wnid": {"type": "string", "description": "WordNet id, for ImageNet models."},
            },
        },
        "Model": {
            "type": "object",
            "required": ["name", "input_size", "classes"],
            "properties": {
                "name": {"type": "string", "example": "resnet50"},
                "input_size": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "[width, height] the image is resized to.",
                },
                "classes": {"type": "integer", "minimum": 1},
                "resize": {
                    "type": "string",
                    "enum": ["crop", "squash"],
                    "description": "How uploads are fitted to input_size.",
                },
                "runtime": {"type": "string", "enum": ["tensorflow", "openvino", "none"]},
                "precision": {"type": "string", "enum": ["f32", "bf16"]},
                "note": {"type": "string", "description": "A caveat, e.g. that the weights are random."},
            },
        },
        "PredictionResult": {
            "type": "object",
            "required": ["success", "predictions", "model", "batch", "timings_ms", "request_id"],
            "properties": {
                "success": {"type": "boolean", "enum": [True]},
                "predictions": {
                    "type": "array",
                    "items": _ref("schemas", "Prediction"),
                    "description": "The top-k labels, most probable first.",
                },
                "model": _ref("schemas", "Model"),
                "batch": {
                    "type": "object",
                    "required": ["id", "size", "worker"],
                    "description": "The model call this image shared with others.",
                    "properties": {
                        "id": {"type": "string"},
                        "size": {"type": "integer", "minimum": 1},
                        "worker": {"type": "string"},
                    },
                },
                "timings_ms": {
                    "type": "object",
                    "required": ["queued", "model", "total"],
                    "properties": {
                        "queued": {**number, "description": "Waiting in the queue for a worker."},
                        "model": {**number, "description": "The batch's model call."},
                        "total": {**number, "description": "Request received to response ready."},
                    },
                },
                "request_id": {"type": "string"},
            },
        },
    }


def openapi_spec(settings: Settings) -> dict:
    method_not_allowed = _error("The path does not take this method; the Allow header lists those it takes.")
    method_not_allowed["headers"] = {"Allow": {"schema": {"type": "string"}, "description": "e.g. POST"}}
    internal = _error("An unexpected failure (e.g. the model failed on this image's batch).")
    unavailable = _error(
        "Redis is unreachable, the queue is full, or no model worker is running.", retry_after=True
    )
    request_id = {
        "X-Request-ID": {
            "schema": {"type": "string"},
            "description": "The client's X-Request-ID if it sent one, else the server's request id.",
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Keras image classification API",
            "version": "1.0.0",
            "description": (
                "Images are queued in Redis and classified in batches by model workers. Every error is "
                'JSON `{"success": false, "error": "..."}`. A path called with a method it does not '
                "take answers 405 with an Allow header."
            ),
        },
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Classify one image",
                    "parameters": [
                        {
                            "name": "X-Request-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Your own id for this request; echoed back and logged.",
                        }
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
                                            "type": "string",
                                            "format": "binary",
                                            "description": "JPEG, PNG, GIF (first frame), WebP, BMP or TIFF.",
                                        }
                                    },
                                },
                                "encoding": {"image": {"contentType": "image/*, application/octet-stream"}},
                            }
                        },
                    },
                    "responses": {
                        "200": _json("The top predictions.", _ref("schemas", "PredictionResult"), request_id),
                        "400": _error(
                            "No multipart field 'image', or it is not an image this server can read, "
                            f"or it has more than {settings.max_image_pixels} pixels."
                        ),
                        "405": method_not_allowed,
                        "413": _error(f"The request body is larger than {settings.max_upload_bytes} bytes."),
                        "500": internal,
                        "503": unavailable,
                        "504": _error(
                            f"No result within {settings.client_timeout:g} s; "
                            "the request was withdrawn from the queue."
                        ),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the web process answers",
                    "responses": {
                        "200": _json(
                            "Alive.",
                            {
                                "type": "object",
                                "required": ["alive"],
                                "properties": {"alive": {"type": "boolean", "enum": [True]}},
                            },
                        ),
                        "405": method_not_allowed,
                        "500": internal,
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: Redis answers and at least one model worker is alive",
                    "responses": {
                        "200": _json(
                            "Ready to classify.",
                            {
                                "type": "object",
                                "required": ["ready", "workers", "queue_depth", "model"],
                                "properties": {
                                    "ready": {"type": "boolean", "enum": [True]},
                                    "workers": {"type": "integer", "minimum": 1},
                                    "queue_depth": {"type": "integer", "minimum": 0},
                                    "model": _ref("schemas", "Model"),
                                },
                            },
                        ),
                        "405": method_not_allowed,
                        "500": internal,
                        "503": _error(
                            "Redis is unreachable or no model worker has sent a heartbeat recently.",
                            retry_after=True,
                        ),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format)",
                    "responses": {
                        "200": {
                            "description": "Metrics; see README for their names and meaning.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "405": method_not_allowed,
                        "500": internal,
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
    }
