"""A request body arrives whole within ``--read-timeout``, or the answer is 408, before the app
runs: neither gevent's WSGI server nor gunicorn's gevent worker bounds how long a body may take,
so a slow upload would hold its connection slot for ever. Large bodies wait on disk."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterable
from typing import IO, Any

import gevent

SPOOL_BYTES = 1024 * 1024  # bodies larger than this wait on disk, not in memory

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BufferedBody:
    """WSGI middleware: a request's body arrives whole within ``read_timeout`` or the answer is
    408, before the app runs (neither pywsgi nor gunicorn's gevent worker bounds a body's time).
    Bodies over ``max_bytes`` are left to the app, which answers 413 without reading them."""

    def __init__(self, app: WsgiApp, read_timeout: float, max_bytes: int) -> None:
        self.app, self.read_timeout, self.max_bytes = app, read_timeout, max_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not (length.isdigit() and int(length) > 0) and not chunked:
            return self.app(environ, start_response)
        if length.isdigit() and int(length) > self.max_bytes:
            return self.app(environ, start_response)
        body: IO[bytes] | None = None
        with gevent.Timeout(self.read_timeout, False):
            body = self._read(environ["wsgi.input"], int(length) if length.isdigit() else None)
        if body is None:
            start_response(
                "408 Request Timeout", [("Content-Type", "application/json"), ("Connection", "close")]
            )
            return [b'{"success": false, "error": "The request body did not arrive in time."}']
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(body.seek(0, io.SEEK_END))
        body.seek(0)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _read(self, stream: IO[bytes], length: int | None) -> IO[bytes]:
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        left = length if length is not None else self.max_bytes + 1  # chunked: a cap of its own
        while left > 0:
            chunk = stream.read(min(left, 64 * 1024))
            if not chunk:
                break
            spool.write(chunk)
            left -= len(chunk)
        return spool
