"""The Open Inference Protocol (KServe v2) over REST, as Triton, KServe, OpenVINO Model Server
and MLServer speak it, on the same queue, batching, deadlines and 503/504 answers as /predict.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness
    GET  /v2/models/<name>[/versions/1]        model metadata
    GET  /v2/models/<name>[/versions/1]/ready  model readiness
    POST /v2/models/<name>[/versions/1]/infer  inference: a BYTES input "image" of encoded images

The model's name is the one its workers serve (resnet50, efficientnet_lite0, or your model file's
name). Errors are the protocol's {"error": "..."}.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from serving.queue.messages import ModelInfo
from serving.web import request_log
from serving.web.classify import prepare_uploads, run_classification
from serving.web.responses import V2_PREFIX, ApiError, error_response, json_response
from serving.web.services import services
from serving.web.uploads import Uploads, parse_top_k
from serving.web.v2_tensors import HEADER_LENGTH, INPUT_NAME, OUTPUT_TYPES, output_tensors, parse_request
from serving.web.worker_directory import ready_state

blueprint = Blueprint("v2", __name__, url_prefix=V2_PREFIX)

SERVER = {
    "name": "keras-redis-server",
    "version": "0.2.0",
    "extensions": ["classification", "binary_tensor_data"],
}
VERSION = "1"  # one version of one model per queue


class NotFound(ApiError):
    status = 404


def served(name: str, version: str | None) -> ModelInfo:
    """The model the workers serve, if that is the one asked for."""
    model = services().workers.model()
    if name != model.name or version not in (None, VERSION):
        asked = f"{name!r}" + (f" version {version!r}" if version else "")
        raise NotFound(f"Unknown model {asked}; this server serves {model.name!r} version {VERSION}.")
    return model


@blueprint.get("")
def server_metadata() -> Response:
    return json_response(SERVER)


@blueprint.get("/health/live")
def live() -> Response:
    return json_response({"live": True})


@blueprint.get("/health/ready")
def ready() -> Response:
    ready_state(services().queue)  # 503 when Redis or every worker is away
    return json_response({"ready": True})


@blueprint.get("/models/<name>")
@blueprint.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    model = served(name, version)
    return json_response(
        {
            "name": model.name,
            "versions": [VERSION],
            "platform": f"keras_{model.runtime or 'none'}",
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": output, "datatype": datatype, "shape": [-1, -1]}
                for output, datatype in OUTPUT_TYPES.items()
            ],
            "parameters": {
                "classes": model.classes,
                "input_size": list(model.input_size),
                "resize": model.resize,
            },
        }
    )


@blueprint.get("/models/<name>/ready")
@blueprint.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    served(name, version)  # the last model served is known while no worker runs: that is not ready
    ready_state(services().queue)
    return json_response({"name": name, "ready": True})


@blueprint.post("/models/<name>/infer")
@blueprint.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    model = served(name, version)
    with request_log.step("read upload", "read", {"http.request.body.size": request.content_length or 0}):
        infer_request = parse_request(request.get_data(), request.headers.get(HEADER_LENGTH))
    top_k = None if infer_request.top_k is None else parse_top_k(infer_request.top_k)
    uploads = Uploads(infer_request.images, as_list=True, top_k=top_k)
    result = run_classification(prepare_uploads(services(), uploads))
    if result.status != 200:
        return error_response(result.status, result.body["error"])
    tensors, binary = output_tensors([answer.predictions for answer in result.answers], infer_request.outputs)
    body = {"model_name": model.name, "model_version": VERSION, "outputs": tensors}
    if infer_request.id is not None:
        body["id"] = infer_request.id
    if not binary:
        return json_response(body)
    header = json_response(body).get_data()
    return Response(
        header + binary, mimetype="application/octet-stream", headers={HEADER_LENGTH: str(len(header))}
    )
