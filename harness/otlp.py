"""An OTLP/HTTP traces receiver on loopback, for the tests and the benchmark: what a collector
would get, decoded from protobuf (opentelemetry-proto). Not part of the service."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OtlpReceiver"]


class OtlpReceiver(ThreadingHTTPServer):
    """``POST /v1/traces`` on a free loopback port. With ``decode`` (the default) every export is
    parsed and kept; without, only its bytes are counted (the benchmark: the receiver's own CPU
    stays out of the figures)."""

    daemon_threads = True

    def __init__(self, decode: bool = True):
        self.decode = decode
        self.exports: list[Any] = []  # ExportTraceServiceRequest messages, as received
        self.bytes_received = 0
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="otlp-receiver", daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def spans(self) -> list[tuple[str, Any]]:
        """(service name, span) for every span received."""
        found = []
        with self._lock:
            exports = list(self.exports)
        for export in exports:
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    found += [(resource.get("service.name", ""), span) for span in scope.spans]
        return found

    def received(self, body: bytes) -> None:
        with self._lock:
            self.bytes_received += len(body)
        if not self.decode:
            return
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        with self._lock:
            self.exports.append(export)


class _Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(404 if self.path != "/v1/traces" else 415)
            return
        self.server.received(body)
        reply = b""  # an empty ExportTraceServiceResponse: everything accepted
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass
