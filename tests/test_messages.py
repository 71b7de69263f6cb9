"""The queue's records: round trips, and every kind of bad bytes refused with a reason."""

import msgpack
import numpy as np
import orjson
import pytest

from serving.queue.messages import (
    BULK,
    INTERACTIVE,
    Answer,
    BatchInfo,
    Heartbeat,
    ImageRef,
    MessageError,
    ModelInfo,
    Request,
    image_refs,
)


def request(**changes) -> Request:
    fields = dict(
        reply_to="r1",
        index=2,
        pixels=np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3),
        top_k=3,
        queued_at=100.5,
        deadline=110.5,
    )
    return Request(**{**fields, **changes})


def packed(**changes) -> bytes:
    fields = msgpack.unpackb(request().to_bytes())
    fields.update(changes)
    return msgpack.packb(fields)


def test_request_round_trip_keeps_every_field_and_the_pixels():
    for original in (request(), request(lane=BULK, index=0)):
        parsed = Request.from_bytes(original.to_bytes())
        np.testing.assert_array_equal(parsed.pixels, original.pixels)
        assert (
            parsed.reply_to,
            parsed.index,
            parsed.top_k,
            parsed.queued_at,
            parsed.deadline,
            parsed.lane,
        ) == (original.reply_to, original.index, 3, 100.5, 110.5, original.lane)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_trace_context_travels_only_when_there_is_one():
    traced = request(trace=TRACEPARENT)
    assert Request.from_bytes(traced.to_bytes()).trace == TRACEPARENT
    assert b"trace" not in request().to_bytes()  # an untraced message is as small as before
    assert len(traced.to_bytes()) - len(request().to_bytes()) < 70
    assert Request.from_bytes(request().to_bytes()).trace == ""


def test_answer_carries_the_batch_trace_to_the_web_tier_but_not_to_clients():
    answer = Answer("r1", 0, "interactive", 200, batch=BatchInfo("b1", 2, "w1"), batch_trace=TRACEPARENT)
    assert Answer.from_bytes(answer.to_bytes(), "r1") == answer
    assert "batch_trace" not in orjson.dumps(answer.body).decode()
    with pytest.raises(MessageError, match="batch_trace"):
        Answer.from_bytes(orjson.dumps({**orjson.loads(answer.to_bytes()), "batch_trace": "x"}), "r1")


def test_request_pixels_travel_as_raw_bytes():
    raw = request(pixels=np.zeros((224, 224, 3), np.uint8)).to_bytes()
    assert 224 * 224 * 3 < len(raw) < 224 * 224 * 3 + 200  # no base64, no float32


def test_non_contiguous_pixels_round_trip():
    base = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    for view in (base[:, ::2], base.transpose(1, 0, 2), base[::-1]):
        np.testing.assert_array_equal(Request.from_bytes(request(pixels=view).to_bytes()).pixels, view)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"shape": [1e20, 5, 3]}, "height"),
        ({"shape": [4, 5]}, "shape"),
        ({"shape": [4, 5, 4]}, "shape"),
        ({"shape": [-4, 5, 3]}, "height"),
        ({"shape": [4, 5, 3], "pixels": b"short"}, "bytes"),
        ({"pixels": "text, not bytes"}, "bytes"),
        ({"deadline": "soon"}, "deadline"),
        ({"deadline": float("nan")}, "deadline"),
        ({"queued_at": None}, "queued_at"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"trace": 17}, "trace"),
        ({"trace": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"}, "trace"),
        ({"trace": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, "trace"),
        ({"trace": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "trace"),
        ({"trace": TRACEPARENT + "\n"}, "trace"),
    ],
)
def test_a_bad_field_is_refused_with_the_reply_address_so_its_sender_is_answered(changes, reason):
    with pytest.raises(MessageError, match=reason) as caught:
        Request.from_bytes(packed(**changes))
    assert caught.value.reply == ("interactive", "r1", 2)


@pytest.mark.parametrize(
    "raw",
    [
        b"not msgpack \xc1",
        msgpack.packb([1, 2, 3]),
        packed(reply_to=None),
        packed(reply_to="x" * 1000),
        packed(index=-1),
        packed(lane="vip"),
        orjson.dumps({"id": "old-format"}),
    ],
)
def test_bytes_that_name_no_sender_are_refused_without_a_reply(raw):
    with pytest.raises(MessageError) as caught:
        Request.from_bytes(raw)
    assert caught.value.reply is None


def test_answer_round_trip_and_bad_answers():
    answer = Answer(
        "r1",
        3,
        "interactive",
        200,
        predictions=[{"label": "cat", "probability": 0.9, "class_id": 281}],
        model=ModelInfo("m", (224, 224), 1000, "crop", "openvino", "f32"),
        batch=BatchInfo("b1", 4, "w1"),
        queued_ms=1.5,
        model_ms=20.25,
    )
    assert Answer.from_bytes(answer.to_bytes(), "r1") == answer
    failed = Answer.failed(("interactive", "r1", 0), 500, "The model failed.")
    assert Answer.from_bytes(failed.to_bytes(), "r1") == failed and failed.body == {
        "error": "The model failed."
    }
    for raw in (b"{}", b"[]", b"garbage", orjson.dumps({"index": 1, "status": 99, "body": {}})):
        with pytest.raises(MessageError):
            Answer.from_bytes(raw, "r1")


def test_heartbeat_round_trip_and_bad_heartbeats():
    model = ModelInfo("resnet50", (224, 224), 1000, resize="crop", runtime="openvino", precision="bf16")
    beat = Heartbeat(model, host="h", pid=7, batch_size=8)
    assert Heartbeat.from_bytes(beat.to_bytes()) == beat
    assert model.as_dict() == {
        "version": "1",
        "name": "resnet50",
        "input_size": [224, 224],
        "classes": 1000,
        "resize": "crop",
        "runtime": "openvino",
        "precision": "bf16",
    }
    for raw in (
        b"not json",
        b"[]",
        b"{}",
        orjson.dumps({"model": {"name": "m", "input_size": [0, 5], "classes": 3}}),
        orjson.dumps({"model": {"name": "m", "input_size": [5, 5], "classes": 3, "resize": "x"}}),
    ):
        with pytest.raises(MessageError):
            Heartbeat.from_bytes(raw)


def test_image_references_round_trip_in_either_lane_and_bad_ones_are_refused():
    image = ImageRef("5f0c" * 8, 31)
    assert image.to_bytes() == b"5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c:31"
    assert ImageRef.from_bytes(image.to_bytes()) == image and image.reply == (INTERACTIVE, "5f0c" * 8, 31)
    job_image = ImageRef.from_bytes(b"job:2", BULK)
    assert job_image.reply == (BULK, "job", 2)
    assert image_refs("r", 3) == [b"r:0", b"r:1", b"r:2"]
    for raw in (b"", b"job", b"job:", b":3", b"job:-1", b"job:1e3", b"job:9999999", b"x" * 129 + b":0"):
        with pytest.raises(MessageError):
            ImageRef.from_bytes(raw)
