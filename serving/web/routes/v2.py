"""The Open Inference Protocol (KServe v2) over REST, as Triton, KServe, OpenVINO Model Server
and MLServer speak it, on the same queue, batching, deadlines and 503/504 answers as /predict.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness
    GET  /v2/models/<name>[/versions/<v>]        model metadata
    GET  /v2/models/<name>[/versions/<v>]/ready  model readiness
    POST /v2/models/<name>[/versions/<v>]/infer  inference: a BYTES input "image" of encoded images
    POST /v2/repository/index                    every model version and its state (Triton's API)

Every model the workers serve has these routes (resnet50, efficientnet_lite0, your model file's
name, or a repository folder's); without a version a request goes to the model's current one.
Errors are the protocol's {"error": "..."}.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from serving.queue.messages import ModelInfo
from serving.web import request_log
from serving.web.auth import check_model, visible_models
from serving.web.classify import prepare_uploads, run_classification
from serving.web.model_directory import ready_state
from serving.web.responses import V2_PREFIX, error_response, json_response
from serving.web.services import services
from serving.web.uploads import Uploads, parse_top_k
from serving.web.v2_tensors import HEADER_LENGTH, INPUT_NAME, OUTPUT_TYPES, output_tensors, parse_request

blueprint = Blueprint("v2", __name__, url_prefix=V2_PREFIX)

SERVER = {
    "name": "keras-redis-server",
    "version": "0.2.0",
    "extensions": ["classification", "binary_tensor_data"],
}


def served(name: str, version: str | None) -> ModelInfo:
    """The model version a request for ``name`` at ``version`` goes to (404 for an unknown one,
    403 for one the request's key may not use)."""
    model = services().models.route(name, version).model
    check_model(model.name)
    return model


@blueprint.get("")
def server_metadata() -> Response:
    return json_response(SERVER)


@blueprint.get("/health/live")
def live() -> Response:
    return json_response({"live": True})


@blueprint.get("/health/ready")
def ready() -> Response:
    ready_state(services().models)  # 503 when Redis or every worker is away
    return json_response({"ready": True})


@blueprint.post("/repository/index")
def repository_index() -> Response:
    """Every version the deployment has served: READY while a worker serves it."""
    state = services().models.state(fresh=True)
    index = []
    for name in visible_models(state.models()):
        for number in sorted(state.versions[name], key=int):
            entry = {
                "name": name,
                "version": number,
                "state": "READY" if state.is_live(name, number) else "UNAVAILABLE",
            }
            if entry["state"] != "READY":
                entry["reason"] = "no live worker"
            index.append(entry)
    return json_response(index)


@blueprint.get("/models/<name>")
@blueprint.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    model = served(name, version)
    versions = sorted(services().models.state().versions[model.name], key=int)
    return json_response(
        {
            "name": model.name,
            "versions": versions if version is None else [model.version],
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
    served(name, version)  # 404 for an unknown model or version
    ready_state(services().models, name, version)  # a version known while no worker runs is not ready
    return json_response({"name": name, "ready": True})


@blueprint.post("/models/<name>/infer")
@blueprint.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    served(name, version)  # 404 before the body is read
    with request_log.step("read upload", "read", {"http.request.body.size": request.content_length or 0}):
        infer_request = parse_request(request.get_data(), request.headers.get(HEADER_LENGTH))
    top_k = None if infer_request.top_k is None else parse_top_k(infer_request.top_k)
    uploads = Uploads(infer_request.images, as_list=True, top_k=top_k, model=name, version=version)
    prepared = prepare_uploads(services(), uploads)
    result = run_classification(prepared)
    if result.status != 200:
        return error_response(result.status, result.body["error"])
    tensors, binary = output_tensors([answer.predictions for answer in result.answers], infer_request.outputs)
    computed = next((answer.model for answer in result.answers if answer.model), prepared.route.model)
    body = {"model_name": computed.name, "model_version": computed.version, "outputs": tensors}
    if infer_request.id is not None:
        body["id"] = infer_request.id
    if not binary:
        return json_response(body)
    header = json_response(body).get_data()
    return Response(
        header + binary, mimetype="application/octet-stream", headers={HEADER_LENGTH: str(len(header))}
    )
