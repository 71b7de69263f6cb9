"""Log lines as text (the default) or JSON, one object a line (``--log-format json``).

A record may carry structured fields in ``extra={"fields": {...}}`` (the request line does):
text lines show the message alone (which says the same as key=value pairs), JSON lines put the
fields beside ``ts``, ``level`` and ``logger``; a ``message`` among them stands for the text.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_WITH_PID = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601 with ms), level, logger, pid, message,
    the record's ``fields``, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict) or "message" not in fields:
            line["message"] = record.getMessage()
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str, log_format: str = "text", with_pid: bool = False) -> None:
    """The root logger's level and format for this process (``with_pid``: text lines name the
    process, for servers of several processes sharing one log)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT_WITH_PID if with_pid else TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
