"""The images a request carries, in any shape clients send them to /predict and /jobs:

- multipart/form-data: one or several file fields named ``image`` (and ``top_k``);
- a raw body: ``Content-Type: image/...`` or ``application/octet-stream``, one image;
- application/json: ``{"images": ["<base64>", ...], "top_k": 3}`` or ``{"image": "<base64>"}``,
  standard or URL-safe base64, with or without a ``data:`` URL prefix;

plus ``?top_k=`` in the query string, and the model: ``?model=NAME&version=V``, the form
fields or JSON keys ``model`` and ``version``, or the path ``/models/NAME/predict``.
The answer mirrors the request: one image (a single field, a raw body, ``"image"``) is answered
as one result, a list as a list.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, replace
from typing import Any

import orjson
from flask import request

from serving.images import ImageError
from serving.web import request_log
from serving.web.responses import ApiError, BadRequest

ACCEPTED_TYPES = ("multipart/form-data", "application/json", "image/*", "application/octet-stream")
DATA_URL = re.compile(r"^data:[\w.+-]*/?[\w.+-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class UnsupportedMediaType(ApiError):
    status = 415


@dataclass(frozen=True)
class Uploads:
    images: list[bytes]
    as_list: bool  # answer with a list of results (the request sent a list)
    top_k: int | None  # asked for; None: the server's --top-k
    model: str | None = None  # the model asked for; None: the default model
    version: str | None = None  # its version; None: the current one


def read_uploads() -> Uploads:
    """The request's images and top_k, or a 400 / 415 that says what to send instead. The limits
    on what they carry are checked on the one path to the queue (serving/web/classify.py)."""
    with request_log.step("read upload", "read", {"http.request.body.size": request.content_length or 0}):
        return _read_uploads()


def _read_uploads() -> Uploads:
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        uploads = _from_form()
    elif mimetype == "application/json":
        uploads = _from_json()
    elif mimetype.startswith("image/") or mimetype == "application/octet-stream":
        uploads = Uploads([request.get_data()], as_list=False, top_k=None)
    elif not mimetype and not request.content_length:
        raise ImageError(
            "Send an image: a multipart/form-data file field named 'image', a raw image body "
            '(Content-Type: image/jpeg, ...), or JSON {"images": ["<base64>"]}.'
        )
    else:
        raise UnsupportedMediaType(
            f"Content-Type {mimetype or '(none)'} is not accepted; send one of {', '.join(ACCEPTED_TYPES)}."
        )
    query_top_k = request.args.get("top_k")
    if uploads.top_k is None and query_top_k is not None:
        uploads = replace(uploads, top_k=parse_top_k(query_top_k))
    # The model: from the path (/models/<name>/predict), the query, or the form or JSON body.
    view_args = request.view_args or {}
    model = view_args.get("name") or request.args.get("model") or uploads.model
    version = view_args.get("version") or request.args.get("version") or uploads.version
    return replace(uploads, model=_text_or_none(model, "model"), version=_text_or_none(version, "version"))


def _text_or_none(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and what == "version":
        value = str(value)
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string.")
    return value


def _from_form() -> Uploads:
    images = [upload.read() for upload in request.files.getlist("image")]
    if not images:
        raise ImageError("Send the image as a multipart/form-data file field named 'image'.")
    top_k = request.form.get("top_k")
    return Uploads(
        images,
        as_list=len(images) > 1,
        top_k=None if top_k is None else parse_top_k(top_k),
        model=request.form.get("model"),
        version=request.form.get("version"),
    )


def _from_json() -> Uploads:
    try:
        body = orjson.loads(request.get_data())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON ({exc}).") from None
    if not isinstance(body, dict) or ("images" in body) == ("image" in body):
        raise BadRequest('Send a JSON object with "images": a list of base64 images (or "image": one).')
    top_k = body.get("top_k")
    parsed_top_k = None if top_k is None else parse_top_k(top_k)
    model = _text_or_none(body.get("model"), "model")
    version = _text_or_none(body.get("version"), "version")
    if "image" in body:
        image = decode_base64(body["image"], "The image")
        return Uploads([image], as_list=False, top_k=parsed_top_k, model=model, version=version)
    images = body["images"]
    if not isinstance(images, list):
        raise BadRequest('"images" must be a list of base64 strings.')
    return Uploads(
        [decode_base64(item, f"Image {i + 1}") for i, item in enumerate(images)],
        as_list=True,
        top_k=parsed_top_k,
        model=model,
        version=version,
    )


def decode_base64(value: Any, what: str) -> bytes:
    """Standard or URL-safe base64, padded or not, with or without a data: URL prefix."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a base64 string.")
    text = DATA_URL.sub("", value.strip(), count=1).translate(_URL_SAFE)
    text += "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64.") from None


_URL_SAFE = str.maketrans("-_", "+/", " \n\r\t")


def parse_top_k(value: Any) -> int:
    """A positive whole number (checked against the model's classes when the model is known)."""
    try:
        top_k = 0 if isinstance(value, bool) else int(value)
    except (TypeError, ValueError, OverflowError):
        top_k = 0
    if top_k < 1 or (isinstance(value, float) and value != top_k):
        raise BadRequest(f"top_k must be a whole number from 1, not {value!r}.")
    return top_k


def checked_top_k(top_k: int | None, default: int, classes: int) -> int:
    """The top_k to serve: the one asked for, within the model's classes; else the default."""
    if top_k is None:
        return min(default, classes)
    if top_k > classes:
        raise BadRequest(f"top_k is {top_k}; this model has {classes} classes.")
    return top_k
