"""The Redis protocol on a real redis-server: batches, bounds, exactly-once answers, requeue."""

import threading

import orjson
import pytest

from serving.queue import Finished, RedisQueue

from .support import leftover_keys

Q = "testq"


@pytest.fixture
def queue(redis_client):
    return RedisQueue(redis_client, Q)


def _fill(queue, count, prefix="m"):
    for i in range(count):
        assert queue.enqueue(f"{prefix}{i}".encode(), f"{prefix}{i}", max_length=1000, wait_seconds=5)


def test_enqueue_refuses_beyond_the_bound(queue):
    _fill(queue, 3)
    assert not queue.enqueue(b"x", "x", max_length=3, wait_seconds=5)
    assert queue.depth() == 3
    assert not queue.redis.exists(queue.waiting_key("x"))


def test_take_batch_takes_in_order_up_to_the_batch_size(queue):
    _fill(queue, 5)
    assert queue.take_batch("w1", 3, window=0, idle_timeout=1) == [b"m0", b"m1", b"m2"]
    assert queue.redis.lrange(queue.processing_key("w1"), 0, -1) == [b"m0", b"m1", b"m2"]
    assert queue.take_batch("w1", 10, window=0.01, idle_timeout=1) == [b"m3", b"m4"]
    assert queue.take_batch("w1", 10, window=0, idle_timeout=0.1) == []


def test_take_batch_waits_the_window_for_late_arrivals(queue):
    _fill(queue, 1)
    threading.Timer(0.05, lambda: _fill(queue, 2, prefix="late")).start()
    batch = queue.take_batch("w1", 8, window=0.5, idle_timeout=1)
    assert batch == [b"m0", b"late0", b"late1"]


def test_concurrent_takers_never_share_a_message(queue, redis_server):
    import redis

    _fill(queue, 400)
    taken = {}

    def take(worker):
        own = RedisQueue(redis.Redis.from_url(redis_server.url), Q)
        mine = []
        while batch := own.take_batch(worker, 7, window=0, idle_timeout=0.2):
            mine += batch
        taken[worker] = mine

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [m for batch in taken.values() for m in batch]
    assert len(everything) == 400 and len(set(everything)) == 400
    assert all(taken.values())  # every worker got work: the test really raced


def test_finish_answers_once_and_clears_processing(queue):
    _fill(queue, 2)
    queue.take_batch("w1", 2, window=0, idle_timeout=1)
    answers = [Finished("m0", {"n": 0}), Finished("m1", {"n": 1})]
    assert queue.finish("w1", answers, result_ttl=60) == 2
    assert queue.finish("w1", answers, result_ttl=60) == 0  # a repeat (requeued copy) is dropped
    assert orjson.loads(queue.wait_result("m0", timeout=1)) == {"n": 0}
    assert orjson.loads(queue.wait_result("m1", timeout=1)) == {"n": 1}
    assert leftover_keys(queue.redis, Q) == []


def test_withdraw_takes_a_queued_message_back(queue):
    _fill(queue, 2)
    assert queue.withdraw(b"m1", "m1") == (True, None)
    assert queue.redis.lrange(Q, 0, -1) == [b"m0"]
    assert not queue.redis.exists(queue.waiting_key("m1"))


def test_withdraw_keeps_a_result_that_landed_late_and_blocks_later_ones(queue):
    _fill(queue, 1)
    queue.take_batch("w1", 1, window=0, idle_timeout=1)
    queue.finish("w1", [Finished("m0", {"late": True})], result_ttl=60)
    removed, late = queue.withdraw(b"m0", "m0")
    assert not removed and orjson.loads(late) == {"late": True}
    assert queue.finish("w1", [Finished("m0", {"again": True})], result_ttl=60) == 0
    assert leftover_keys(queue.redis, Q) == []


def test_dead_workers_messages_go_back_to_the_head_in_order(queue):
    _fill(queue, 4)
    queue.take_batch("dead", 2, window=0, idle_timeout=1)  # m0, m1; no heartbeat: dead
    queue.take_batch("alive", 1, window=0, idle_timeout=1)  # m2
    queue.beat("alive", {"model": {}}, ttl=10)
    assert queue.requeue_dead() == 2
    assert queue.redis.lrange(Q, 0, -1) == [b"m0", b"m1", b"m3"]
    assert queue.redis.llen(queue.processing_key("alive")) == 1
    assert set(queue.live_workers()) == {"alive"}
