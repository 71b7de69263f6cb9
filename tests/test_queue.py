"""The Redis queue on a real redis-server: lanes, bounds, batches, exactly-once answers, requeue."""

import threading
import time

import numpy as np
import pytest
import redis

from serving.queue import JobSpec, RedisQueue
from serving.queue.messages import BULK, INTERACTIVE, Answer, Heartbeat, ImageRef, ModelInfo, Request
from serving.queue.redis_queue import NotReplicated
from serving.worker.batching import take_batch

from .support import leftover_keys, messages_of, push_raw, queued, wait_until

Q = "testq"


@pytest.fixture
def queue(redis_client):
    return RedisQueue(redis_client, Q)


def message(request_id: str, index: int = 0, lane: str = INTERACTIVE) -> bytes:
    pixels = np.full((2, 2, 3), index % 256, np.uint8)
    return Request(request_id, index, pixels, top_k=1, queued_at=0.0, deadline=1e12, lane=lane).to_bytes()


def ref(request_id: str, index: int = 0) -> bytes:
    return ImageRef(request_id, index).to_bytes()


def fill(queue, count, prefix="m") -> list[bytes]:
    """``count`` one-image requests queued; their lane entries (references), in order."""
    for i in range(count):
        assert queue.enqueue(f"{prefix}{i}", [message(f"{prefix}{i}")], max_length=10_000, keep_seconds=30)
    return [ref(f"{prefix}{i}") for i in range(count)]


def answer(request_id: str, index: int = 0, label: str = "") -> Answer:
    """An answer whose one prediction's ``label`` tells the copies of an answer apart."""
    return Answer(request_id, index, INTERACTIVE, 200, predictions=[{"label": label, "probability": 1.0}])


def labels(answers: list[Answer]) -> list[str]:
    return [answer.predictions[0]["label"] for answer in answers]


def test_enqueue_refuses_once_the_lane_holds_its_bound(queue):
    fill(queue, 3)
    assert not queue.enqueue("x", [message("x")], max_length=3, keep_seconds=30)
    assert queue.depth() == 3
    assert not queue.redis.exists(queue.keys.waiting("x"), queue.keys.image("x", 0))  # nothing left behind


def test_a_request_of_several_images_is_queued_whole_and_awaited_per_image(queue):
    messages = [message("multi", i) for i in range(3)]
    assert queue.enqueue("multi", messages, max_length=10, keep_seconds=30)
    assert queued(queue) == [b"multi:0", b"multi:1", b"multi:2"]  # the lane holds references
    assert queue.redis.hkeys(queue.keys.waiting("multi")) == [b"0", b"1", b"2"]
    assert queue.redis.mget([queue.keys.image("multi", i) for i in range(3)]) == messages
    for key in (queue.keys.waiting("multi"), queue.keys.image("multi", 2)):
        assert 0 < queue.redis.pttl(key) <= 30_000  # both go if the web server dies


def test_a_worker_reads_the_messages_behind_what_it_took_in_order(queue):
    first = [message("a", i) for i in range(2)]
    queue.enqueue("a", first, max_length=10, keep_seconds=30)
    queue.enqueue("b", [message("b")], max_length=10, keep_seconds=30)
    batch = queue.take("w1", 3)
    assert batch.interactive == [ref("a", 0), ref("a", 1), ref("b")]
    assert queue.read_messages(batch) == [
        (ImageRef("a", 0), first[0]),
        (ImageRef("a", 1), first[1]),
        (ImageRef("b", 0), message("b")),
    ]


def test_a_withdrawn_requests_image_already_taken_is_not_read(queue):
    fill(queue, 2)
    batch = queue.take("w1", 2)
    queue.withdraw("m0", [0])  # its client gave up after the worker took it
    assert messages_of(queue, batch.interactive) == [message("m1")]


def test_take_batch_takes_in_order_up_to_the_batch_size(queue):
    messages = fill(queue, 5)
    assert take_batch(queue, "w1", 3, window=0, idle_timeout=1).interactive == messages[:3]
    assert queue.redis.lrange(queue.keys.processing("w1"), 0, -1) == messages[:3]
    assert take_batch(queue, "w1", 10, window=0.01, idle_timeout=1).interactive == messages[3:]
    assert len(take_batch(queue, "w1", 10, window=0, idle_timeout=0.1)) == 0


def test_take_fills_from_the_interactive_lane_first_and_tops_up_from_bulk(queue):
    bulk = [ImageRef("job", i).to_bytes() for i in range(6)]
    push_raw(queue, BULK, *bulk)
    interactive = fill(queue, 3)
    batch = queue.take("w1", 5)
    assert batch.interactive == interactive and batch.bulk == bulk[:2]
    assert queue.redis.lrange(queue.keys.processing("w1", BULK), 0, -1) == bulk[:2]
    assert queue.depth(BULK) == 4


def in_background(take) -> tuple[threading.Thread, dict]:
    """Run ``take()`` in a thread; the dict gets its "batch" and the monotonic time it "returned"."""
    taken: dict = {}

    def run():
        taken["batch"] = take()
        taken["returned"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, taken


def first_message_taken(queue, worker: str) -> None:
    """Wait until the worker holds its first message: its batching window is open from then."""
    wait_until(lambda: queue.redis.llen(queue.keys.processing(worker)) == 1, 10, "the first take")


def test_take_batch_waits_the_window_for_late_arrivals(queue):
    fill(queue, 1)
    taker, taken = in_background(lambda: take_batch(queue, "w1", 8, window=2.0, idle_timeout=1))
    first_message_taken(queue, "w1")
    fill(queue, 2, prefix="late")  # well inside the 2 s window
    taker.join(timeout=20)
    assert len(taken["batch"]) == 3


def test_the_window_ends_as_soon_as_the_batch_is_full(queue):
    fill(queue, 1)
    taker, taken = in_background(lambda: take_batch(queue, "w1", 4, window=30.0, idle_timeout=1))
    first_message_taken(queue, "w1")
    fill(queue, 3, prefix="late")
    full = time.monotonic()
    taker.join(timeout=40)
    assert len(taken["batch"]) == 4
    # Full at once: the take returned then, where the window would have run 30 s.
    assert taken["returned"] - full < 10
    fill(queue, 1, prefix="too-late")
    assert take_batch(queue, "w2", 4, window=0, idle_timeout=2).interactive == [ref("too-late0")]


def test_a_blocked_worker_wakes_for_bulk_work_too(queue):
    def submit_bulk():  # as POST /jobs does it: the image, then the doorbell
        push_raw(queue, BULK, ImageRef("job", 0).to_bytes())
        queue.redis.rpush(queue.keys.doorbell, "1")

    threading.Timer(0.1, submit_bulk).start()
    batch = take_batch(queue, "w1", 8, window=0, idle_timeout=4)
    assert batch.bulk == [ImageRef("job", 0).to_bytes()]


def test_concurrent_takers_never_share_a_message(queue, redis_server):
    fill(queue, 400)
    takers = 4
    everyone_has_a_batch = threading.Barrier(takers, timeout=10)
    taken = {}

    def take(worker):
        own = RedisQueue(redis.Redis.from_url(redis_server.url), Q)
        mine = list(take_batch(own, worker, 7, window=0, idle_timeout=0.2).interactive)
        everyone_has_a_batch.wait()  # then all race for the rest
        while batch := take_batch(own, worker, 7, window=0, idle_timeout=0.2):
            mine += batch.interactive
        taken[worker] = mine

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [m for batch in taken.values() for m in batch]
    assert len(everything) == 400 and len(set(everything)) == 400
    assert all(len(mine) >= 7 for mine in taken.values())


def test_answer_writes_once_and_clears_processing(queue):
    fill(queue, 2)
    take_batch(queue, "w1", 2, window=0, idle_timeout=1)
    answers = [answer("m0", label="0"), answer("m1", label="1")]
    assert queue.answer("w1", answers, result_ttl=60) == 2
    assert queue.answer("w1", answers, result_ttl=60) == 0  # a repeat (requeued copy) is dropped
    assert labels(queue.wait_answers("m0", 1, timeout=1)) == ["0"]
    assert labels(queue.wait_answers("m1", 1, timeout=1)) == ["1"]
    assert leftover_keys(queue.redis, Q) == []


def test_each_image_of_a_request_is_answered_once_and_collected_together(queue):
    messages = [message("multi", i) for i in range(3)]
    queue.enqueue("multi", messages, max_length=10, keep_seconds=30)
    queue.take("w1", 3)
    queue.answer("w1", [answer("multi", 2), answer("multi", 0)], result_ttl=60)
    queue.answer("w1", [answer("multi", 2, label="again"), answer("multi", 1)], result_ttl=60)
    got = queue.wait_answers("multi", 3, timeout=1)
    assert sorted(a.index for a in got) == [0, 1, 2] and labels(got) == ["", "", ""]
    assert leftover_keys(queue.redis, Q) == []


def test_wait_answers_returns_what_arrived_when_time_is_up(queue):
    queue.enqueue("slow", [message("slow", 0), message("slow", 1)], max_length=10, keep_seconds=30)
    queue.answer("w1", [answer("slow", 1)], result_ttl=60)
    assert [a.index for a in queue.wait_answers("slow", 2, timeout=0.2)] == [1]


def test_withdraw_takes_queued_messages_back(queue):
    refs = fill(queue, 2)
    assert queue.withdraw("m1", [0]) == (1, [])
    assert queued(queue) == [refs[0]]
    assert not queue.redis.exists(queue.keys.waiting("m1"), queue.keys.image("m1", 0))


def test_withdraw_keeps_an_answer_that_landed_late_and_blocks_later_ones(queue):
    fill(queue, 1)
    take_batch(queue, "w1", 1, window=0, idle_timeout=1)
    queue.answer("w1", [answer("m0", label="late")], result_ttl=60)
    removed, late = queue.withdraw("m0", [0])
    assert removed == 0 and labels(late) == ["late"]
    assert queue.answer("w1", [answer("m0", label="again")], result_ttl=60) == 0
    assert leftover_keys(queue.redis, Q) == []


def test_dead_workers_messages_go_back_to_the_head_of_their_lanes_in_order(queue):
    messages = fill(queue, 4)
    bulk = [ImageRef("job", i).to_bytes() for i in range(2)]
    push_raw(queue, BULK, *bulk)
    queue.take("dead", 3)  # m0, m1, m2; no heartbeat: dead
    queue.take("alive", 2)  # m3 and the first bulk image
    queue.redis.rpush(queue.keys.processing("dead", BULK), b"bulk-held-by-the-dead")
    heartbeat = Heartbeat(ModelInfo("m", (2, 2), 3), host="h", pid=1, batch_size=8)
    queue.beat("alive", heartbeat, ttl=10)
    assert queue.requeue_dead() == 4
    assert queued(queue) == messages[:3]
    assert queued(queue, BULK) == [b"bulk-held-by-the-dead", bulk[1]]
    assert queue.redis.llen(queue.keys.processing("alive")) == 1
    assert set(queue.live_workers()) == {"alive"}


def job(queue, job_id: str, images: int, deadline_in: float = 60.0) -> list[bytes]:
    """Create a job as POST /jobs does; its image messages."""
    now = time.time()
    messages = [
        Request(job_id, i, np.full((2, 2, 3), i, np.uint8), 1, now, now + deadline_in, lane=BULK).to_bytes()
        for i in range(images)
    ]
    spec = JobSpec(job_id, now, now + deadline_in, top_k=1, as_list=True, result_ttl=60)
    assert queue.create_job(spec, messages, max_length=10_000)
    return messages


def test_the_bulk_lane_holds_references_and_the_job_its_messages(queue):
    messages = job(queue, "j1", 3)
    assert queued(queue, BULK) == [b"j1:0", b"j1:1", b"j1:2"]
    batch = queue.take("w1", 2)
    assert messages_of(queue, batch.bulk, BULK) == messages[:2]
    assert queue.redis.hget(queue.keys.job("j1"), "status") == b"running"


def test_cancelling_takes_a_jobs_queued_images_out_of_the_lane(queue):
    job(queue, "before", 2)
    messages = job(queue, "cancelled", 3)
    job(queue, "after", 1)
    taken = queue.take("w1", 3)  # before:0, before:1 and cancelled:0, already in a worker's hands
    assert queue.cancel_job("cancelled")["status"] == "queued"
    assert queued(queue, BULK) == [b"after:0"]
    assert not queue.redis.exists(*queue.keys.job_keys("cancelled")[:2], queue.keys.job_images("cancelled"))
    opened = messages_of(queue, taken.bulk, BULK)  # the worker finds nothing behind the cancelled one
    assert len(opened) == 2 and messages[0] not in opened
    assert queue.cancel_job("cancelled") == {}


def test_an_answered_job_image_is_not_computed_again_after_a_requeue(queue):
    messages = job(queue, "j", 2)
    taken = queue.take("frozen", 1)
    assert messages_of(queue, taken.bulk, BULK) == messages[:1]
    done = Answer("j", 0, BULK, 200)
    assert queue.answer("another", [done], result_ttl=60) == 1
    assert queue.redis.hkeys(queue.keys.job_images("j")) == [b"1"]  # answered: its message went
    assert messages_of(queue, taken.bulk, BULK) == []  # the frozen worker's copy leads nowhere
    queue.answer("another", [Answer("j", 1, BULK, 200)], result_ttl=60)
    assert queue.redis.hget(queue.keys.job("j"), "status") == b"done"
    assert not queue.redis.exists(queue.keys.job_images("j"))


def test_an_expired_jobs_messages_go_and_its_references_lead_nowhere(queue):
    job(queue, "late", 2)
    taken = queue.take("w1", 1)
    queue.answer("w1", [], result_ttl=60, expired_jobs=["late"])
    assert queue.redis.hget(queue.keys.job("late"), "status") == b"expired"
    assert not queue.redis.exists(queue.keys.job_images("late"))
    assert messages_of(queue, taken.bulk + queue.take("w1", 1).bulk, BULK) == []


def test_a_bulk_entry_that_is_not_a_reference_is_dropped(queue, caplog):
    messages = job(queue, "j", 1)
    refs = [b"not a reference", b"j:99999999", b"j:", b"no-such-job:0", b"j:0"]
    assert messages_of(queue, refs, BULK) == messages
    assert [record.args[2] for record in caplog.records] == refs[:3]  # logged; the unknown job's is not


def test_a_heartbeat_that_cannot_be_read_is_skipped(queue, caplog):
    queue.redis.set(queue.keys.heartbeat("from-another-version"), b"not json")
    queue.redis.set(queue.keys.heartbeat("no-model"), b'{"host": "h"}')
    queue.redis.zadd(queue.keys.workers, {"from-another-version": 0, "no-model": 0})
    queue.beat("good", Heartbeat(ModelInfo("m", (2, 2), 3), host="h", pid=1, batch_size=8), ttl=10)
    assert set(queue.live_workers()) == {"good"}
    assert "from-another-version" in caplog.text and "no-model" in caplog.text


def test_with_replicas_required_a_job_no_replica_holds_is_taken_back(redis_client):
    """The session's Redis has no replica: WAIT 1 answers 0 after its timeout, so the job is not
    acknowledged (the web tier answers 503) and nothing of it stays queued."""
    strict = RedisQueue(redis_client, "replicatedq", min_replicas=1)
    now = time.time()
    spec = JobSpec("unreplicated", now, now + 60, top_k=1, as_list=False, result_ttl=60)
    started = time.monotonic()
    with pytest.raises(NotReplicated):
        strict.create_job(spec, [message("unreplicated", lane=BULK)], max_length=10)
    assert time.monotonic() - started >= 0.4  # it did wait for a replica
    assert strict.depth(BULK) == 0 and not redis_client.exists(strict.keys.job("unreplicated"))


def test_with_replicas_required_only_job_answers_wait_for_one(redis_client):
    strict = RedisQueue(redis_client, "replicatedq2", min_replicas=1)
    strict.enqueue("r", [message("r")], max_length=10, keep_seconds=30)
    strict.take("w", 1)
    started = time.monotonic()
    assert strict.answer("w", [answer("r")], result_ttl=60) == 1  # interactive: no WAIT
    assert time.monotonic() - started < 0.4
    job_answer = Answer("some-job", 0, BULK, 200, predictions=[{"label": "x", "probability": 1.0}])
    with pytest.raises(NotReplicated):
        strict.answer("w", [job_answer], result_ttl=60)
    redis_client.delete(*strict.keys.all_fixed(), strict.keys.result("r"))


def test_no_pixels_cross_a_script(redis_client):
    """Every step of a request's and a job's life, watched with MONITOR: the 150 KB messages
    travel by plain commands only, never as a script's argument or inside one (a large string
    costs Redis far more in a script: bench/redis_lua.py)."""
    queue = RedisQueue(redis_client, "monitoredq")
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), np.uint8)
    now = time.time()
    big = [Request("r", i, pixels, 1, now, now + 60).to_bytes() for i in range(2)]
    seen: list[dict] = []
    with redis_client.monitor() as monitor:
        watcher = threading.Thread(target=_watch, args=(monitor, seen))
        watcher.start()
        assert queue.enqueue("r", big, max_length=10, keep_seconds=30)
        assert not queue.enqueue("refused", big, max_length=1, keep_seconds=30)
        assert queue.enqueue("gone", big[:1], max_length=10, keep_seconds=30)
        queue.withdraw("gone", [0])
        spec = JobSpec("j", now, now + 60, top_k=1, as_list=True, result_ttl=60)
        job_messages = [Request("j", 0, pixels, 1, now, now + 60, lane=BULK).to_bytes()]
        assert queue.create_job(spec, job_messages, max_length=10)
        interactive, bulk = queue.take("w", 2), queue.take("w2", 1)  # a batch of each lane
        assert messages_of(queue, interactive.interactive) == big
        assert messages_of(queue, bulk.bulk, BULK) == job_messages
        assert queue.answer("w", [answer("r", 0), answer("r", 1)], result_ttl=60) == 2
        assert queue.answer("w2", [Answer("j", 0, BULK, 200)], result_ttl=60) == 1
        redis_client.echo("monitor: done")
        watcher.join(timeout=30)
    scripted = [c for c in seen if c["client_type"] == "lua" or c["command"].startswith(("EVAL", "EVALSHA"))]
    plain = [c for c in seen if c not in scripted]
    # A script's line holds its text (an EVAL's) and its small arguments; a message is 150 KB.
    assert scripted and max(len(c["command"]) for c in scripted) < 20_000
    # Inside a script, the keys that hold messages are only checked or deleted, never read. (The
    # lanes and processing lists a script pops hold what scripts pushed: references, as above.)
    touching = [
        c["command"].split()[0].upper()
        for c in seen
        if c["client_type"] == "lua" and ":image" in c["command"]
    ]
    assert touching and set(touching) <= {"DEL", "HDEL", "HEXISTS", "PEXPIRE"}, touching
    assert (
        sum(len(c["command"]) > 150_000 for c in plain) == 6
    )  # 5 SETs, the job's HSET, the MGET's reply is not shown
    redis_client.delete(*redis_client.keys(f"{queue.keys.tag}*"))


def _watch(monitor, seen: list) -> None:
    for command in monitor.listen():
        seen.append(command)
        if command["command"] == "ECHO monitor: done":
            return
