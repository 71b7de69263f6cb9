"""The records that travel through Redis between web servers and model workers.

Web servers and workers never build or read these by hand: each record turns itself into bytes
and back, and ``from_bytes`` validates everything once, so a worker of another version or a
hand-written message fails alone with a clear reason instead of breaking the batch it lands in.

- ``Request``: one image to classify (msgpack, the pixels as raw bytes: no base64, no pickle).
- ``ImageRef``: a reference to one queued image (``<request or job>:<index>``), what the lanes
  hold; the image's ``Request`` waits in its request's or job's images hash.
- ``Answer``: the worker's answer for one image (JSON: the web tier passes it on to the client).
- ``Heartbeat``: what a live worker serves (JSON), read by web servers to prepare images.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import msgpack
import numpy as np
import orjson

from serving.settings import RESIZE_MODES, VERSION

INTERACTIVE = "interactive"  # /predict, /v2, the upload page: a client waits on the answer
BULK = "bulk"  # /jobs: answered into the job's record, taken only when no interactive work waits
LANES = (INTERACTIVE, BULK)

MAX_SIDE = 4096  # pixels; queued images are already resized to a model input, far below this
MAX_ID_LENGTH = 128  # a job id names its model and version: <model>.<version>.<32 hex digits>
MAX_INDEX = 100_000
MAX_TOP_K = 100_000
_IMAGE_REF = re.compile(r"([^:]+):([0-9]{1,6})")
# A W3C traceparent: version, trace id, parent span id, flags (serving/tracing.py writes them).
_TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


class MessageError(ValueError):
    """Bytes that are not a valid record. ``reply`` is (lane, reply_to, index) when those could be
    read, so the sender of a broken request can still be answered."""

    def __init__(self, reason: str, reply: tuple[str, str, int] | None = None):
        super().__init__(reason)
        self.reply = reply


def _text(value: Any, name: str, max_length: int = MAX_ID_LENGTH) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_length or not value.isprintable():
        raise MessageError(f"{name} must be a short printable string")
    return value


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"{name} must be an integer in {low}..{high}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MessageError(f"{name} must be a finite number")
    return float(value)


def _traceparent(value: Any, name: str = "trace") -> str:
    """An optional trace context: absent, or a W3C traceparent."""
    if value is None:
        return ""
    if not isinstance(value, str) or not _TRACEPARENT.fullmatch(value):
        raise MessageError(f"{name} must be a W3C traceparent")
    return value


def _unpack(raw: bytes) -> dict[str, Any]:
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MessageError(f"not a msgpack record ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise MessageError("not a msgpack map")
    return data


@dataclass(frozen=True)
class Request:
    """One image for the model: uint8 pixels already at the model's input size."""

    reply_to: str  # the request id (interactive) or job id (bulk) whose record receives the answer
    index: int  # the image's position in its request or job
    pixels: np.ndarray = field(repr=False)  # uint8, (height, width, 3)
    top_k: int
    queued_at: float  # epoch seconds
    deadline: float  # epoch seconds; past it the worker drops the image unrun
    lane: str = INTERACTIVE
    trace: str = ""  # the request's W3C traceparent, when it is traced (serving/tracing.py)

    @property
    def reply(self) -> tuple[str, str, int]:
        """Where its answer goes: (lane, reply_to, index)."""
        return self.lane, self.reply_to, self.index

    def to_bytes(self) -> bytes:
        pixels = np.ascontiguousarray(self.pixels, dtype=np.uint8)
        record: dict[str, Any] = {
            "reply_to": self.reply_to,
            "index": self.index,
            "lane": self.lane,
            "top_k": self.top_k,
            "queued_at": self.queued_at,
            "deadline": self.deadline,
            "shape": list(pixels.shape),
            "pixels": pixels.tobytes(),
        }
        if self.trace:  # untraced requests stay as small as before
            record["trace"] = self.trace
        packed: bytes = msgpack.packb(record)
        return packed

    @classmethod
    def from_bytes(cls, raw: bytes) -> Request:
        """Parse and validate; raises MessageError, carrying the reply address once it is known."""
        data = _unpack(raw)
        lane = data.get("lane")
        if lane not in LANES:
            raise MessageError(f"lane must be one of {', '.join(LANES)}")
        reply = (
            lane,
            _text(data.get("reply_to"), "reply_to"),
            _integer(data.get("index"), "index", 0, MAX_INDEX),
        )
        try:
            return cls(
                reply_to=reply[1],
                index=reply[2],
                lane=lane,
                pixels=_pixels(data),
                top_k=_integer(data.get("top_k"), "top_k", 1, MAX_TOP_K),
                queued_at=_number(data.get("queued_at"), "queued_at"),
                deadline=_number(data.get("deadline"), "deadline"),
                trace=_traceparent(data.get("trace")),
            )
        except MessageError as exc:
            raise MessageError(str(exc), reply) from None


def image_messages(
    reply_to: str,
    images: Sequence[np.ndarray],
    top_k: int,
    queued_at: float,
    deadline: float,
    lane: str = INTERACTIVE,
    trace: str | None = None,
) -> list[bytes]:
    """The queue messages for a request's or a job's images, one per image, in order; ``trace``
    is the request's traceparent when it is traced."""
    return [
        Request(reply_to, index, pixels, top_k, queued_at, deadline, lane, trace or "").to_bytes()
        for index, pixels in enumerate(images)
    ]


def _pixels(data: dict[str, Any]) -> np.ndarray:
    shape, pixels = data.get("shape"), data.get("pixels")
    if not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3:
        raise MessageError("shape must be [height, width, 3]")
    height = _integer(shape[0], "height", 1, MAX_SIDE)
    width = _integer(shape[1], "width", 1, MAX_SIDE)
    if not isinstance(pixels, bytes) or len(pixels) != height * width * 3:
        raise MessageError(f"pixels must be {height * width * 3} bytes of uint8 RGB")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)


@dataclass(frozen=True)
class ImageRef:
    """A reference to one queued image: its request's (interactive) or job's (bulk) id and its
    index. The lanes hold these, not the images: a queued image crosses the queue's Lua scripts
    as a few dozen bytes, and a withdraw or cancel takes it out of a lane by value without
    comparing whole messages. The messages wait in the request's or job's images hash
    (serving/queue/keys.py)."""

    reply_to: str
    index: int
    lane: str = INTERACTIVE

    def to_bytes(self) -> bytes:
        return f"{self.reply_to}:{self.index}".encode()

    @classmethod
    def from_bytes(cls, raw: bytes, lane: str = INTERACTIVE) -> ImageRef:
        match = _IMAGE_REF.fullmatch(raw.decode(errors="replace"))
        if match is None:
            raise MessageError("not an image reference (<request or job>:<index>)")
        return cls(_text(match[1], "reply_to"), _integer(int(match[2]), "index", 0, MAX_INDEX), lane)

    @property
    def reply(self) -> tuple[str, str, int]:
        return self.lane, self.reply_to, self.index


def image_refs(reply_to: str, count: int) -> list[bytes]:
    """The lane entries of a request's or job's ``count`` images, in order."""
    return [ImageRef(reply_to, index).to_bytes() for index in range(count)]


class Prediction(TypedDict, total=False):
    """One ranked class of an answer (``wnid`` for ImageNet models only)."""

    label: str
    probability: float
    class_id: int
    wnid: str


@dataclass(frozen=True)
class BatchInfo:
    """Which model call computed an answer."""

    id: str
    size: int
    worker: str


def _batch_info(data: Any) -> BatchInfo:
    return BatchInfo(str(data["id"]), _integer(data["size"], "size", 0, MAX_INDEX), str(data["worker"]))


@dataclass(frozen=True)
class Answer:
    """The answer for one image: status 200 with its predictions, or an error sentence.

    On the wire (JSON) a 200 carries ``predictions``, ``model``, ``batch`` and ``timings_ms``, the
    per-image part of the HTTP answer; ``body`` builds that dict for the web tier."""

    reply_to: str
    index: int
    lane: str
    status: int
    error: str = ""  # the sentence, when status is not 200
    predictions: list[Prediction] = field(default_factory=list)
    model: ModelInfo | None = None
    batch: BatchInfo | None = None
    queued_ms: float = 0.0  # from queued to taken by the worker
    model_ms: float = 0.0  # the batch's model call
    batch_trace: str = ""  # the batch span's traceparent, when it was traced (not sent to clients)

    @classmethod
    def failed(cls, reply: tuple[str, str, int], status: int, message: str) -> Answer:
        lane, reply_to, index = reply
        return cls(reply_to, index, lane, status, error=message)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def body(self) -> dict[str, Any]:
        """The image's part of the HTTP answer."""
        if not self.ok:
            return {"error": self.error}
        body: dict[str, Any] = {"predictions": self.predictions}
        if self.model is not None:
            body["model"] = self.model.as_dict()
        if self.batch is not None:
            body["batch"] = {"id": self.batch.id, "size": self.batch.size, "worker": self.batch.worker}
        body["timings_ms"] = {"queued": self.queued_ms, "model": self.model_ms}
        return body

    def to_bytes(self) -> bytes:
        record: dict[str, Any] = {"index": self.index, "status": self.status, **self.body}
        if self.batch_trace:
            record["batch_trace"] = self.batch_trace
        return orjson.dumps(record)

    @classmethod
    def from_bytes(cls, raw: bytes, reply_to: str, lane: str = INTERACTIVE) -> Answer:
        try:
            data = orjson.loads(raw)
            index = _integer(data["index"], "index", 0, MAX_INDEX)
            status = _integer(data["status"], "status", 100, 599)
            if status != 200:
                return cls(reply_to, index, lane, status, error=str(data["error"]))
            predictions = data["predictions"]
            if not isinstance(predictions, list) or not all(isinstance(p, dict) for p in predictions):
                raise MessageError("predictions must be a list of objects")
            batch = data.get("batch")
            timings = data.get("timings_ms", {})
            return cls(
                reply_to,
                index,
                lane,
                status,
                predictions=predictions,
                model=None if data.get("model") is None else ModelInfo.from_dict(data["model"]),
                batch=None if batch is None else _batch_info(batch),
                queued_ms=_number(timings.get("queued", 0.0), "queued"),
                model_ms=_number(timings.get("model", 0.0), "model"),
                batch_trace=_traceparent(data.get("batch_trace"), "batch_trace"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MessageError(f"not an answer record ({exc})") from None


def _version(value: Any) -> str:
    if not isinstance(value, str) or not VERSION.fullmatch(value):
        raise MessageError("version must be a whole number of up to 9 digits, as a string")
    return value


def _agreement(value: Any) -> float | None:
    if value is None:
        return None
    agreement = _number(value, "int8_agreement")
    if not 0.0 <= agreement <= 1.0:
        raise MessageError("int8_agreement must be a fraction in 0..1")
    return agreement


@dataclass(frozen=True)
class ModelInfo:
    """What a worker's model needs from the web tier, and what answers say about it."""

    name: str
    input_size: tuple[int, int]  # (width, height), as Pillow counts
    classes: int
    resize: str = "squash"  # how uploads are fitted to input_size: crop or squash
    runtime: str = ""  # tensorflow, openvino, or none (the null model)
    precision: str = ""  # f32, bf16, int8
    note: str = ""  # a caveat, e.g. that the weights are random
    int8_agreement: float | None = None  # INT8's measured top-1 agreement with f32, when it was tried
    version: str = "1"  # which version of the model: every answer names the one that computed it

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "input_size": list(self.input_size),
            "classes": self.classes,
            "resize": self.resize,
        }
        if self.runtime:
            info["runtime"] = self.runtime
        if self.precision:
            info["precision"] = self.precision
        if self.note:
            info["note"] = self.note
        if self.int8_agreement is not None:
            info["int8_agreement"] = self.int8_agreement
        return info

    @classmethod
    def from_dict(cls, data: Any) -> ModelInfo:
        if not isinstance(data, dict):
            raise MessageError("model must be an object")
        size = data.get("input_size")
        if not isinstance(size, list) or len(size) != 2:
            raise MessageError("input_size must be [width, height]")
        resize = data.get("resize", "squash")
        if resize not in RESIZE_MODES:
            raise MessageError(f"resize must be one of {', '.join(RESIZE_MODES)}")
        return cls(
            name=_text(data.get("name"), "name", 200),
            input_size=(_integer(size[0], "width", 1, MAX_SIDE), _integer(size[1], "height", 1, MAX_SIDE)),
            classes=_integer(data.get("classes"), "classes", 1, MAX_TOP_K),
            resize=resize,
            runtime=str(data.get("runtime", "")),
            precision=str(data.get("precision", "")),
            note=str(data.get("note", "")),
            int8_agreement=_agreement(data.get("int8_agreement")),
            version=_version(data.get("version", "1")),
        )


@dataclass(frozen=True)
class Heartbeat:
    """A live worker's description, kept under its heartbeat key with a TTL."""

    model: ModelInfo
    host: str
    pid: int
    batch_size: int

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"model": self.model.as_dict(), "host": self.host, "pid": self.pid, "batch_size": self.batch_size}
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Heartbeat:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MessageError("a heartbeat must be JSON") from None
        if not isinstance(data, dict):
            raise MessageError("a heartbeat must be a JSON object")
        return cls(
            model=ModelInfo.from_dict(data.get("model")),
            host=str(data.get("host", "")),
            pid=_integer(data.get("pid", 0), "pid", 0, 2**31),
            batch_size=_integer(data.get("batch_size", 1), "batch_size", 1, MAX_INDEX),
        )
