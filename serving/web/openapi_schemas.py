"""The JSON shapes of the API, as OpenAPI 3 component schemas (used by serving/openapi.py)."""

from __future__ import annotations

from typing import Any

from serving.settings import RESIZE_MODES


def ref(name: str, kind: str = "schemas") -> dict[str, Any]:
    return {"$ref": f"#/components/{kind}/{name}"}


NUMBER = {"type": "number", "minimum": 0}
TOP_K = {
    "type": "integer",
    "minimum": 1,
    "description": "Predictions per image (default: the server's --top-k).",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "error": {"type": "string", "description": "A plain sentence saying what went wrong."},
            "request_id": {"type": "string", "description": "Present once the images were queued."},
        },
    },
    "ProtocolError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "description": "The Open Inference Protocol's error shape.",
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
            "version": {
                "type": "string",
                "pattern": "^[1-9][0-9]{0,8}$",
                "description": "The version that computed it.",
            },
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
                "enum": list(RESIZE_MODES),
                "description": "How uploads are fitted.",
            },
            "runtime": {"type": "string", "enum": ["tensorflow", "openvino", "none"]},
            "precision": {"type": "string", "enum": ["f32", "bf16", "int8"]},
            "int8_agreement": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "INT8 top-1 agreement with f32 on held-out calibration images.",
            },
            "note": {"type": "string", "description": "A caveat, e.g. that the weights are random."},
        },
    },
    "ImageResult": {
        "type": "object",
        "required": ["predictions", "model", "batch", "timings_ms"],
        "description": "One image's answer.",
        "properties": {
            "predictions": {
                "type": "array",
                "items": ref("Prediction"),
                "description": "Most probable first.",
            },
            "model": ref("Model"),
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
                "required": ["queued", "model"],
                "properties": {
                    "queued": {**NUMBER, "description": "Waiting in the queue for a worker."},
                    "model": {**NUMBER, "description": "The batch's model call."},
                    "total": {**NUMBER, "description": "Request received to response ready."},
                },
            },
        },
    },
    "PredictionResult": {
        "description": 'The answer for one image (a single file field, a raw body, or JSON "image").',
        "allOf": [
            ref("ImageResult"),
            {
                "type": "object",
                "required": ["success", "request_id"],
                "properties": {
                    "success": {"type": "boolean", "enum": [True]},
                    "request_id": {"type": "string"},
                },
            },
        ],
    },
    "PredictionResults": {
        "type": "object",
        "required": ["success", "results", "request_id"],
        "description": 'The answers for several images (repeated file fields, or JSON "images"), in order.',
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "results": {"type": "array", "items": ref("ImageResult")},
            "request_id": {"type": "string"},
            "timings_ms": {"type": "object", "properties": {"total": NUMBER}},
        },
    },
    "ImagesJson": {
        "type": "object",
        "description": "Base64 images (standard or URL-safe, padded or not, data: URLs too): "
        '"images" for a list, answered as a list, or "image" for one.',
        "properties": {
            "images": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "image": {"type": "string"},
            "top_k": TOP_K,
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "status"],
        "description": "A job's state; once done, also the body /predict gives (success, predictions or "
        "results); failed or expired: success false and an error.",
        "properties": {
            "id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["queued", "running", "done", "failed", "expired", "cancelled", "deleted"],
            },
            "images": {"type": "integer", "minimum": 1},
            "done": {"type": "integer", "minimum": 0, "description": "Images answered so far."},
            "cancelled": {"type": "integer", "minimum": 0, "description": "Images dropped unrun (DELETE)."},
            "created": NUMBER,
            "deadline": NUMBER,
            "finished": NUMBER,
            "success": {"type": "boolean"},
            "error": {"type": "string"},
        },
    },
    "Tensor": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "example": "BYTES"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {}},
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "description": 'One BYTES input named "image": base64 strings in "data", or the binary tensor '
        "data extension (Inference-Header-Content-Length). Outputs: labels, probabilities, "
        'class_ids; "parameters": {"classification": K} on one gives "score:index:label".',
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"top_k": TOP_K, "binary_data_output": {"type": "boolean"}},
            },
            "inputs": {"type": "array", "items": ref("Tensor")},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": ref("Tensor")},
        },
    },
}
