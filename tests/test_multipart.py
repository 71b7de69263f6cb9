"""serving/web/multipart.py: werkzeug's multipart decoder with its per-request patterns replaced
must decode every body exactly as werkzeug's own does: the same events, data and errors, for
generated and hostile bodies fed in random chunks."""

from __future__ import annotations

import random
import re

import pytest
from werkzeug import formparser
from werkzeug.sansio.multipart import LINE_BREAK, MultipartDecoder, NeedData

from serving.web.multipart import BoundaryDecoder, BoundarySearch

from .support import record_compiled_patterns

BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "


def events(decoder_class: type, boundary: bytes, chunks: list[bytes]) -> list[object]:
    """Everything the decoder says about the body: its events in order, then its error if any."""
    decoder = decoder_class(boundary, max_form_memory_size=10_000, max_parts=3)  # bodies have up to 4
    said: list[object] = []
    try:
        for chunk in [*chunks, None]:
            decoder.receive_data(chunk)
            while not isinstance(event := decoder.next_event(), NeedData):
                said.append(event)
                if type(event).__name__ == "Epilogue":
                    return said
    except Exception as exc:  # noqa: BLE001  # the error is part of what must match
        said.append((type(exc), str(exc)))
    return said


def random_body(rng: random.Random) -> tuple[bytes, bytes]:
    boundary = "".join(rng.choice(BCHARS) for _ in range(rng.randint(1, 40))).rstrip() or "b"
    marker = b"--" + boundary.encode()
    breaks = [b"\r\n", b"\n", b"\r"]

    def line_break() -> bytes:
        return rng.choice(breaks) if rng.random() < 0.3 else b"\r\n"

    def near_misses() -> bytes:  # content that looks like a boundary and is not one
        pieces = [
            marker[: rng.randint(1, len(marker))],
            b"\r\n" + marker[: rng.randint(0, len(marker) - 1)],
            marker,  # no line break before it
            b"\r\n" + marker + b"x",
            b"\r\n" + marker + b" \t",
            b"\r\r\n" + marker[:-1],
            rng.randbytes(rng.randint(0, 30)),
        ]
        return b"".join(rng.sample(pieces, rng.randint(1, len(pieces))))

    body = rng.choice([b"", b"preamble text", near_misses()])
    for _ in range(rng.randint(0, 4)):
        body += (b"" if not body and rng.random() < 0.5 else line_break()) + marker
        body += rng.choice([b"", b" ", b"\t "]) + line_break()
        name = rng.choice(['name="image"; filename="p.jpg"', 'name="top_k"', 'name="x"'])
        if rng.random() < 0.95:
            body += f"Content-Disposition: form-data; {name}".encode() + line_break()
        body += b"Content-Type: application/octet-stream" + line_break() + line_break()
        body += near_misses() if rng.random() < 0.6 else rng.randbytes(rng.randint(0, 3000))
    body += line_break() + marker + rng.choice([b"--", b"-- ", b"--\r\n", b"", b"x"])
    body += rng.choice([b"", b"\r\n", b"\r\nepilogue"])
    if rng.random() < 0.15:
        body = body[: rng.randint(0, len(body))]
    return boundary.encode(), body


def chunked(rng: random.Random, body: bytes) -> list[bytes]:
    if rng.random() < 0.3:
        return [body]
    chunks, at = [], 0
    while at < len(body):
        size = rng.choice([1, 2, 3, 7, 64, 1000, 70000])
        chunks.append(body[at : at + size])
        at += size
    return chunks


def test_it_decodes_every_body_as_werkzeugs_decoder_does():
    rng = random.Random(20261203)
    differing = []
    for _ in range(3000):
        boundary, body = random_body(rng)
        chunks = chunked(rng, body)
        theirs = events(MultipartDecoder, boundary, chunks)
        ours = events(BoundaryDecoder, boundary, chunks)
        if ours != theirs:
            differing.append((boundary, body[:200], theirs, ours))
    assert not differing, differing[:2]


@pytest.mark.parametrize("required", [False, True])
def test_the_search_finds_what_werkzeugs_pattern_finds(required):
    rng = random.Random(7)
    for _ in range(5000):
        boundary = rng.choice([b"b", b"--", b"ab-", b"x y", b"(a)+b?"])
        alphabet = [b"\r", b"\n", b"-", b" ", b"\t", b"x", b"--" + boundary, b"\r\n--" + boundary]
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        pos = rng.randint(0, len(data))
        prefix = LINE_BREAK if required else LINE_BREAK + b"?"
        pattern = re.compile(
            rb"%s--%s(--[^\S\n\r]*%s?|[^\S\n\r]*%s)" % (prefix, re.escape(boundary), LINE_BREAK, LINE_BREAK),
            re.MULTILINE,
        )
        theirs = pattern.search(data, pos)
        ours = BoundarySearch(boundary, line_break_required=required).search(bytearray(data), pos)
        expected = None if theirs is None else (theirs.start(), theirs.end(), theirs.group(1))
        assert (None if ours is None else (ours.start(), ours.end(), ours.group(1))) == expected, (data, pos)


def test_an_upload_through_the_app_compiles_no_pattern_from_its_boundary(colour_app, monkeypatch):
    from .support import colour_image

    boundary = "f00dfeed" * 4
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="red.png"\r\n\r\n'.encode()
        + colour_image("red")
        + f"\r\n--{boundary}--\r\n".encode()
    )
    compiled = record_compiled_patterns(monkeypatch)
    response = colour_app.test_client().post(
        "/predict", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 200 and response.json["predictions"][0]["label"] == "red"
    assert formparser.MultipartDecoder is BoundaryDecoder
    assert not [pattern for pattern in compiled if boundary in str(pattern)]
