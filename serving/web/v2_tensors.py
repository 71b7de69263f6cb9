"""Tensors of the Open Inference Protocol (KServe v2) over REST: reading an inference request's
BYTES input of encoded images (JSON data, or the binary tensor data extension Triton's clients
use) and writing the classification outputs back in either form.

Binary tensor data: the body is the JSON header (its length in the Inference-Header-Content-Length
header), then each binary tensor's bytes in order; a BYTES tensor is each element's 4-byte
little-endian length followed by its bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.web.responses import BadRequest
from serving.web.uploads import decode_base64

INPUT_NAME = "image"
OUTPUT_TYPES = {"labels": "BYTES", "probabilities": "FP32", "class_ids": "INT64"}
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int | None  # Triton's classification extension: "score:index:label" strings
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes]
    outputs: list[RequestedOutput]
    top_k: int | None  # parameters.top_k, else the largest classification count asked for


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    header, binary = _split(body, header_length)
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadRequest('An inference request is a JSON object with an "inputs" list.')
    parameters = _object(header.get("parameters"), "parameters")
    images = _images(header["inputs"], binary)
    outputs = _outputs(header.get("outputs"), bool(parameters.get("binary_data_output", False)))
    counts = [output.classification for output in outputs if output.classification]
    top_k = parameters.get("top_k", max(counts) if counts else None)
    request_id = header.get("id")
    return InferRequest(None if request_id is None else str(request_id), images, outputs, top_k)


def _split(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    length = len(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be a number of bytes.") from None
        if not 0 <= length <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {length}; the body has {len(body)} bytes.")
    try:
        return orjson.loads(body[:length]), body[length:]
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The inference request header is not valid JSON ({exc}).") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f'"{what}" must be an object.')
    return value


def _images(inputs: list[Any], binary: bytes) -> list[bytes]:
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f'Send one input tensor, "{INPUT_NAME}": BYTES, one encoded image per element.')
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME or tensor.get("datatype") != "BYTES":
        raise BadRequest(
            f'The input must be named "{INPUT_NAME}" with datatype BYTES, not '
            f"{tensor.get('name')!r} {tensor.get('datatype')!r}."
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape) or not shape:
        raise BadRequest("The input's shape must be a list of sizes, e.g. [2] for two images.")
    count = math.prod(shape)  # Python integers: a huge shape cannot overflow to a small count
    size = _object(tensor.get("parameters"), "parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or not 0 <= size <= len(binary):
            raise BadRequest(f"binary_data_size {size!r} does not match the {len(binary)} binary bytes sent.")
        images = deserialize_bytes(binary[:size])
    else:
        images = [
            decode_base64(item, f"Element {i} of the input")
            for i, item in enumerate(_flat(tensor.get("data")))
        ]
    if len(images) != count:
        raise BadRequest(f"The input's shape {shape} holds {count} elements; {len(images)} were sent.")
    return images


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest('The input needs "data": base64 strings of encoded images (or binary data).')
    flat: list[Any] = []
    for item in data:
        flat.extend(_flat(item) if isinstance(item, list) else [item])
    return flat


def _outputs(requested: Any, binary_by_default: bool) -> list[RequestedOutput]:
    if requested is None:
        return [RequestedOutput(name, None, binary_by_default) for name in OUTPUT_TYPES]
    if not isinstance(requested, list) or not requested:
        raise BadRequest('"outputs" must be a list of {"name": ...} objects.')
    outputs = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUT_TYPES:
            raise BadRequest(f"Unknown output {name!r}; this model has {', '.join(OUTPUT_TYPES)}.")
        parameters = _object(item.get("parameters"), "parameters")
        classification = parameters.get("classification")
        if classification is not None and (not isinstance(classification, int) or classification < 1):
            raise BadRequest("classification must be a count of classes, from 1.")
        outputs.append(
            RequestedOutput(name, classification, bool(parameters.get("binary_data", binary_by_default)))
        )
    return outputs


def deserialize_bytes(raw: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest("The binary BYTES tensor ends inside an element's length.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest("The binary BYTES tensor ends inside an element.")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def serialize_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def output_tensors(
    results: Sequence[Sequence[Mapping[str, Any]]], outputs: list[RequestedOutput]
) -> tuple[list[dict[str, Any]], bytes]:
    """The requested outputs for each image's ranked predictions: JSON tensors, and the binary
    data of those asked in binary, in order."""
    rows, k = len(results), min(len(predictions) for predictions in results)
    tensors, binary = [], []
    for output in outputs:
        take = min(k, output.classification or k)
        ranked = [predictions[:take] for predictions in results]
        if output.classification:
            datatype = "BYTES"
            values: list[Any] = [
                f"{p['probability']:f}:{p['class_id']}:{p['label']}" for row in ranked for p in row
            ]
        elif output.name == "labels":
            datatype, values = "BYTES", [p["label"] for row in ranked for p in row]
        elif output.name == "probabilities":
            datatype, values = "FP32", [p["probability"] for row in ranked for p in row]
        else:
            datatype, values = "INT64", [p["class_id"] for row in ranked for p in row]
        tensor: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": [rows, take]}
        if output.binary:
            data = _binary(datatype, values)
            tensor["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        else:
            tensor["data"] = values
        tensors.append(tensor)
    return tensors, b"".join(binary)


def _binary(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes([str(value).encode() for value in values])
    return np.asarray(values, dtype="<f4" if datatype == "FP32" else "<i8").tobytes()
