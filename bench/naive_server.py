"""The seed design as a baseline: one model, ``predict`` per request, a threaded server, no queue.

python -m bench.naive_server --model resnet50 --weights none --port 5055
"""

from __future__ import annotations

import argparse
import sys

import orjson
from flask import Flask, Response, request

from serving.images import ImageError, prepare_image


def build_naive_app(classifier, top_k_count: int = 5) -> Flask:
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        upload = request.files.get("image")
        try:
            if upload is None:
                raise ImageError("Send the image as a multipart/form-data file field named 'image'.")
            pixels = prepare_image(upload.read(), classifier.input_size, 40_000_000)
        except ImageError as exc:
            return Response(
                orjson.dumps({"success": False, "error": str(exc)}), 400, mimetype="application/json"
            )
        probabilities = classifier.predict(pixels[None])
        body = {"success": True, "predictions": classifier.top_k(probabilities, top_k_count)[0]}
        return Response(orjson.dumps(body), mimetype="application/json")

    @app.get("/readyz")
    def readyz():
        return Response(orjson.dumps({"ready": True}), mimetype="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--model-threads", type=int, default=0)
    parser.add_argument("--threads", type=int, default=32, help="HTTP threads, as the server has")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    from waitress import serve

    from serving.models import RuntimeOptions, configure_tensorflow, load_classifier

    configure_tensorflow(args.model_threads)
    # The seed design: TensorFlow, the whole image squashed to the input size.
    classifier = load_classifier(
        args.model,
        args.weights,
        resize="squash",
        options=RuntimeOptions(runtime="tensorflow", threads=args.model_threads),
    )
    serve(build_naive_app(classifier), host="127.0.0.1", port=args.port, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
