"""werkzeug's multipart/form-data decoder, minus two regular expressions compiled per request.

``MultipartDecoder`` compiles two patterns with the request's boundary written into them. Every
client draws a new boundary for every request (curl, requests, browsers), so Python's pattern
cache never hits: 0.65 ms of CPU a request on a 2-core EPYC, more than the JPEG decode of a
small photo. ``BoundaryDecoder`` is werkzeug's decoder with those two patterns replaced by a
search that finds the same matches with ``bytes.find`` for the boundary and one pattern compiled
once for what may follow it (tests/test_multipart.py checks it against werkzeug's own on
generated and hostile bodies, in random chunks). Installed in place of werkzeug's class where
its form parser makes one (``install``, from create_app); nothing else of werkzeug changes.
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug import formparser
from werkzeug.sansio.multipart import LINE_BREAK, MultipartDecoder

# What may follow "--boundary" in werkzeug's patterns: "--" (the last one) or horizontal space,
# then a line break (optional after the last).
_AFTER_BOUNDARY = re.compile(rb"(--[^\S\n\r]*%s?|[^\S\n\r]*%s)" % (LINE_BREAK, LINE_BREAK))
# werkzeug's __init__ compiles its patterns from this; the same every time, so they are cached.
_PLACEHOLDER = b"boundary-replaced-by-BoundarySearch"


class BoundaryMatch:
    """The parts of an ``re.Match`` werkzeug's decoder reads."""

    __slots__ = ("_start", "_end", "_after")

    def __init__(self, start: int, end: int, after: bytes):
        self._start, self._end, self._after = start, end, after

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, index: int) -> bytes:
        if index != 1:
            raise IndexError(index)
        return self._after


class BoundarySearch:
    """``re.compile(LINE_BREAK [?] + b"--" + re.escape(boundary) + _AFTER_BOUNDARY).search``,
    found without compiling anything: the leftmost occurrence of "--boundary" that the pattern
    would match, its start moved back over the line break before it."""

    def __init__(self, boundary: bytes, line_break_required: bool):
        self._marker = b"--" + boundary
        self._required = line_break_required

    def search(self, data: bytes | bytearray, pos: int = 0) -> BoundaryMatch | None:
        marker = self._marker
        at = data.find(marker, pos)
        while at != -1:
            start = self._start(data, at, pos)
            if start is not None:
                after = _AFTER_BOUNDARY.match(data, at + len(marker))
                if after is not None:
                    return BoundaryMatch(start, after.end(), bytes(after.group(1)))
            at = data.find(marker, at + 1)
        return None

    def _start(self, data: bytes | bytearray, at: int, pos: int) -> int | None:
        """Where a match of the marker at ``at`` begins: at the line break before it ("\\r\\n"
        first, as the pattern's alternation tries it), never before ``pos``."""
        if at - 2 >= pos and data[at - 2 : at] == b"\r\n":
            return at - 2
        if at - 1 >= pos and data[at - 1 : at] in (b"\r", b"\n"):
            return at - 1
        return None if self._required else at


class BoundaryDecoder(MultipartDecoder):
    def __init__(
        self, boundary: bytes, max_form_memory_size: int | None = None, *, max_parts: int | None = None
    ) -> None:
        super().__init__(_PLACEHOLDER, max_form_memory_size, max_parts=max_parts)
        self.boundary = boundary
        self.preamble_re: Any = BoundarySearch(boundary, line_break_required=False)
        self.boundary_re: Any = BoundarySearch(boundary, line_break_required=True)


def install() -> None:
    """werkzeug's form parser makes a ``BoundaryDecoder`` for every multipart body from now on."""
    formparser.MultipartDecoder = BoundaryDecoder  # type: ignore[attr-defined]
