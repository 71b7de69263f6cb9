"""The gevent server's header parsing: what pywsgi's own parser gives, without reading the
header block as a multipart e-mail message (which compiles a regular expression from each
upload's boundary)."""

from __future__ import annotations

import io
from http import client

import pytest

from serving.servers.gevent_server import MAX_HEADERS, GuardedHandler, read_headers

from .support import record_compiled_patterns

BOUNDARY = "b7f1c0de5e1f4a2b9d3c6e8f0a1b2c3d"
BLOCKS = [
    f"Host: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 9\r\n\r\n",
    "Host: x\r\nX-Twice: 1\r\nX-Twice: 2\r\nContent-Type: image/jpeg\r\n\r\n",
    "Host: x\r\nX-Folded: a\r\n  continued\r\nX-Latin: caf\xe9\r\n\r\n",
    "Host: x\nX-Bare-Newlines: yes\n\n",
    "Host: x\r\nX-Cut: at the end of the stream\r\n",  # no blank line: the stream ended
    "\r\n",
]


def parsed(message) -> tuple[str, list[tuple[str, str]]]:
    """What pywsgi reads of it (not the e-mail defects of a multipart body it never had)."""
    return message.status, list(message.items())


@pytest.mark.parametrize("block", BLOCKS)
def test_headers_come_out_as_pywsgis_own_parser_gives_them(block):
    from gevent.pywsgi import headers_factory

    raw = block.encode("iso-8859-1") + b"--body, never read here"
    ours = GuardedHandler.MessageClass(None, io.BytesIO(raw), 0)
    assert parsed(ours) == parsed(headers_factory(io.BytesIO(raw), 0))
    assert ours.get("content-type") == headers_factory(io.BytesIO(raw), 0).get("content-type")


def test_a_multipart_uploads_boundary_is_not_compiled(monkeypatch):
    compiled = record_compiled_patterns(monkeypatch)
    GuardedHandler.MessageClass(None, io.BytesIO(BLOCKS[0].encode()), 0)  # as pywsgi calls it
    assert not [pattern for pattern in compiled if BOUNDARY in str(pattern)]
    client.parse_headers(io.BytesIO(BLOCKS[0].encode()))  # the stdlib parser does compile it
    assert [pattern for pattern in compiled if BOUNDARY in str(pattern)], "the check itself is blind"


def test_the_limits_of_a_header_block_hold():
    too_long = b"Host: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n"
    assert read_headers(io.BytesIO(too_long), 0).status == "Line too long"  # pywsgi answers 400
    too_many = b"".join(b"X-%d: 1\r\n" % n for n in range(MAX_HEADERS + 1)) + b"\r\n"
    with pytest.raises(client.HTTPException, match="more than 100 headers"):
        read_headers(io.BytesIO(too_many), 0)
