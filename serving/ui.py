"""The browser-facing pages: the upload page at / and the OpenAPI description.

The page's form posts to / so that it works without JavaScript: the server runs the same
handler as POST /predict and renders its JSON answer (or error) as HTML. With JavaScript,
static/app.js sends the form to /predict instead and renders the JSON itself. /predict
always answers JSON, whatever the client's Accept header says.
"""

from __future__ import annotations

import base64
import io

import orjson
import redis
from flask import Blueprint, Response, current_app, render_template, request

from helpers import ImageError, open_image, to_rgb

from .openapi import openapi_spec
from .web import ServiceUnavailable, json_response

blueprint = Blueprint("ui", __name__, template_folder="templates")

THUMBNAIL_SIZE = (320, 320)
# Everything the page uses is served from here; the thumbnail is a data: or blob: URL.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _human_bytes(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:g} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1024
    return str(count)


def _current_model() -> dict | None:
    try:
        return current_app.extensions["worker_directory"].model()
    except (ServiceUnavailable, redis.RedisError):  # the page still loads while they are away
        return None


def _page(status: int = 200, headers: dict | None = None, **context) -> Response:
    max_bytes = current_app.config["MAX_CONTENT_LENGTH"]
    html = render_template("index.html", model=_current_model(), max_bytes=max_bytes,
                           max_size=_human_bytes(max_bytes), **context)
    response = Response(html, status=status, headers=headers, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _thumbnail_data_url() -> str | None:
    """The upload, shrunk, as a data: URL: the no-JavaScript page has no other way to show it."""
    upload = request.files.get("image")
    if upload is None:
        return None
    upload.stream.seek(0)
    try:
        image = to_rgb(open_image(upload.read(), current_app.extensions["settings"].max_image_pixels))
    except (ImageError, OSError, ValueError):
        return None
    image.thumbnail(THUMBNAIL_SIZE)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@blueprint.get("/")
def index():
    return _page()


@blueprint.post("/")
def classify_form():
    """POST /predict for browsers without JavaScript: the same answer, as a page."""
    app = current_app._get_current_object()
    try:
        response = app.make_response(app.view_functions["predict"]())
    except Exception as exc:  # the app's own error handlers make the JSON error, as for /predict
        response = app.make_response(app.handle_user_exception(exc))
    body = orjson.loads(response.get_data())
    headers = {"Retry-After": response.headers["Retry-After"]} if "Retry-After" in response.headers else None
    if body.get("success"):
        return _page(result=body, thumbnail=_thumbnail_data_url(), headers=headers)
    return _page(response.status_code, headers=headers, error=body.get("error", "The request failed."))


@blueprint.get("/openapi.json")
def openapi():
    return json_response(openapi_spec(current_app.extensions["settings"]))
