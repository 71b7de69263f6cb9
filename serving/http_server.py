"""The HTTP server for `python run_keras_server.py`: waitress, with JSON errors of its own.

Waitress buffers a whole request body (spooling large ones to disk) before the app runs,
so the app answers oversized uploads with a JSON 413. Bodies far beyond the limit are
refused by waitress itself; its errors are rewritten to the same JSON shape.
"""

from __future__ import annotations

import logging

import orjson
from flask import Flask
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from settings import Settings

log = logging.getLogger(__name__)


class JsonErrorTask(ErrorTask):
    def execute(self):
        error = self.request.error
        body = orjson.dumps({"success": False, "error": f"{error.reason}: {error.body}."})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def serve(app: Flask, settings: Settings) -> None:
    server = create_server(
        app, host=settings.host, port=settings.port, threads=settings.web_threads,
        max_request_body_size=settings.max_upload_bytes * 4, ident="keras-server",
    )
    server.channel_class = JsonErrorChannel
    log.info("Serving HTTP on http://%s:%s", settings.host, server.effective_port)
    server.run()
