"""The upload page at /.

The page's form posts to / so that it works without JavaScript: the server classifies the upload
as POST /predict does and renders the answer (or the error) as HTML. With JavaScript,
static/app.js sends the form to /predict instead and renders the JSON itself.
"""

from __future__ import annotations

import base64
import io

import redis
from flask import Blueprint, Response, current_app, render_template, request
from PIL import Image

from serving.images import ImageError
from serving.queue.messages import ModelInfo
from serving.web import request_log
from serving.web.classify import prepare_uploads, run_classification
from serving.web.responses import RETRY_AFTER_SECONDS, ApiError, describe_error
from serving.web.services import services
from serving.web.uploads import Uploads

blueprint = Blueprint("ui", __name__)

THUMBNAIL_SIZE = (320, 320)
# Everything the page uses is served from here; the thumbnail is a data: or blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if count < 1024:
            return f"{count:g} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} GB"


def _default_model() -> ModelInfo | None:
    try:
        return services().models.model()
    except (ApiError, redis.RedisError):  # the page still loads while they are away
        return None


def _model_names() -> list[str]:
    try:
        return services().models.state().models()
    except redis.RedisError:
        return []


def _page(status: int = 200, **context: object) -> Response:
    max_bytes = current_app.config["MAX_CONTENT_LENGTH"]
    html = render_template(
        "index.html",
        model=_default_model(),
        models=_model_names(),
        max_bytes=max_bytes,
        max_size=_human_bytes(max_bytes),
        auth=services().settings.auth == "keys",
        **context,
    )
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _thumbnail_data_url(image: Image.Image) -> str:
    """The whole upload, shrunk, as a data: URL: the no-JavaScript page has no other way to show it."""
    image = image.copy()
    image.thumbnail(THUMBNAIL_SIZE)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@blueprint.get("/")
def index() -> Response:
    return _page()


@blueprint.post("/")
def classify_form() -> Response:
    """POST /predict for browsers without JavaScript: the same path and answer, as a page."""
    decoded: list[Image.Image] = []  # the upload as decoded, for the thumbnail
    try:
        with request_log.step("read upload", "read", {"http.request.body.size": request.content_length or 0}):
            upload = request.files.get("image")
            if upload is None:
                raise ImageError("Choose an image first.")
            model = request.form.get("model") or None
            uploads = Uploads([upload.read()], as_list=False, top_k=None, model=model)
        result = run_classification(prepare_uploads(services(), uploads, on_decoded=decoded.append))
    except Exception as exc:  # the same status and sentence /predict would answer
        status, message = describe_error(exc)
        return _page(status, error=message)
    if result.status != 200:
        return _page(result.status, error=result.body["error"])
    result.body["timings_ms"]["total"] = request_log.elapsed_ms()
    return _page(result=result.body, thumbnail=_thumbnail_data_url(decoded[0]))
