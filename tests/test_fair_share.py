"""Tenants share the queue fairly, on a real redis-server with the real scripts: each tenant's
images wait in its own lane, a take fills the batch from the tenants in turn (least served
first), and every script keeps the lane's count, the tenants' lanes and the active sets in step."""

import time

import pytest

from serving.queue import JobSpec, RedisQueue
from serving.queue.keys import DEFAULT_TENANT
from serving.queue.messages import BULK, INTERACTIVE, ImageRef
from serving.queue.redis_queue import TenantQueueFull

from .support import leftover_keys, queued
from .test_queue import fill, message, ref

Q = "fairq"


@pytest.fixture
def queue(redis_client):
    return RedisQueue(redis_client, Q)


def send(queue, tenant: str, count: int, cap: int = 0) -> list[bytes]:
    """``count`` one-image requests of ``tenant``; their lane entries (references)."""
    for i in range(count):
        request_id = f"{tenant}-{i}"
        assert queue.enqueue(request_id, [message(request_id)], 10_000, 30, tenant=tenant, tenant_cap=cap)
    return [ref(f"{tenant}-{i}") for i in range(count)]


def submit_job(queue, tenant: str, job_id: str, images: int) -> None:
    now = time.time()
    messages = [message(job_id, i, BULK) for i in range(images)]
    spec = JobSpec(job_id, now, now + 60, 1, True, 60, tenant=tenant)
    assert queue.create_job(spec, messages, max_length=10_000)


def owner(raw: bytes) -> str:
    """The tenant of a reference to an image sent by ``send`` ("<tenant>-<i>:0") or of a job
    ("<tenant>job:<index>")."""
    reply_to = ImageRef.from_bytes(raw).reply_to
    return reply_to.split("-")[0] if "-" in reply_to else reply_to.removesuffix("job")


def assert_counts_in_step(queue) -> None:
    """Each lane's count equals the messages in its tenants' lanes; the active set names exactly
    the tenants that have some."""
    for lane in (INTERACTIVE, BULK):
        tenants = {raw.decode() for raw in queue.redis.zrange(queue.keys.active(lane), 0, -1)}
        lanes = {
            key.decode().split(":tenant:")[1].removesuffix(":bulk"): queue.redis.llen(key)
            for key in queue.redis.scan_iter(match=queue.keys.tenant_lane("*", lane))
            if key.decode().endswith(":bulk") == (lane == BULK)
        }
        assert queue.depth(lane) == sum(lanes.values()), lane
        assert tenants == {tenant for tenant, count in lanes.items() if count}, lane


def test_one_tenants_flood_delays_anothers_image_by_at_most_one_batch(queue):
    send(queue, "flood", 200)
    single = send(queue, "single", 1)
    first = queue.take("w", 8)
    assert single[0] in first.interactive  # not after 200 images: in the very next batch
    assert [owner(raw) for raw in first.interactive].count("flood") == 7
    assert_counts_in_step(queue)


def test_a_batch_is_filled_from_the_tenants_in_turn(queue):
    for tenant in ("a", "b", "c"):
        send(queue, tenant, 10)
    batch = queue.take("w", 9)
    assert sorted(owner(raw) for raw in batch.interactive) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    # Each tenant's own images stay in their order.
    assert [raw for raw in batch.interactive if owner(raw) == "b"] == queued_order("b", 3)
    assert_counts_in_step(queue)


def queued_order(tenant: str, count: int) -> list[bytes]:
    return [ref(f"{tenant}-{i}") for i in range(count)]


def test_a_tenant_that_joins_late_starts_level_and_saves_no_credit(queue):
    send(queue, "early", 40)
    for _ in range(4):
        queue.take("w", 5)  # early has been served 20 images alone
    send(queue, "late", 20)
    batch = queue.take("w", 10)
    # Level with early from its first image, not 20 images ahead: the batch is shared.
    assert sorted(owner(raw) for raw in batch.interactive) == ["early"] * 5 + ["late"] * 5
    assert_counts_in_step(queue)


def test_two_bulk_tenants_share_batches_half_and_half(queue):
    submit_job(queue, "p", "pjob", 30)
    submit_job(queue, "q", "qjob", 30)
    shares = {"p": 0, "q": 0}
    for _ in range(4):
        for raw in queue.take("w", 6).bulk:
            shares[raw.decode().split("job:")[0]] += 1
    assert shares == {"p": 12, "q": 12}
    assert_counts_in_step(queue)


def test_a_dead_workers_images_go_back_to_their_own_tenants_lanes_in_order(queue):
    a = send(queue, "a", 4)
    b = send(queue, "b", 4)
    submit_job(queue, "c", "cjob", 3)
    taken = queue.take("dead", 8)  # a0 b0 a1 b1 ... (interactive fills the batch)
    assert len(taken.interactive) == 8
    bulk = queue.take("dead", 2).bulk  # the job's first two images, with no interactive left
    assert queue.depth() == 0 and len(bulk) == 2
    assert queue.requeue_dead() == 10
    assert queued(queue, tenant="a") == a and queued(queue, tenant="b") == b
    assert queued(queue, BULK, "c") == [b"cjob:0", b"cjob:1", b"cjob:2"]
    assert not queue.redis.exists(queue.keys.owners("dead"), queue.keys.owners("dead", BULK))
    assert_counts_in_step(queue)
    # And they are served fairly again.
    assert sorted(owner(raw) for raw in queue.take("w", 4).interactive) == ["a", "a", "b", "b"]


def test_a_tenants_cap_refuses_what_would_exceed_it_and_writes_nothing(queue):
    send(queue, "capped", 3, cap=4)
    submit_job(queue, "capped", "cappedjob", 1)  # jobs count against the same cap
    with pytest.raises(TenantQueueFull):
        queue.enqueue(
            "capped-refused", [message("capped-refused")], 10_000, 30, tenant="capped", tenant_cap=4
        )
    assert queue.depth() == 3 and len(queued(queue, tenant="capped")) == 3
    refused = (queue.keys.waiting("capped-refused"), queue.keys.image("capped-refused", 0))
    assert not queue.redis.exists(*refused)  # nothing of it written, its message deleted
    assert queue.redis.get(queue.keys.image("capped-0", 0)) == message("capped-0")  # the queued kept theirs
    now = time.time()
    spec = JobSpec("refused", now, now + 60, 1, True, 60, tenant="capped")
    with pytest.raises(TenantQueueFull):
        queue.create_job(spec, [message("refused", 0, BULK)], 10_000, tenant_cap=4)
    assert not queue.redis.exists(queue.keys.job("refused"), queue.keys.job_images("refused"))
    send(queue, "other", 2, cap=4)  # another tenant has its own cap
    queue.take("w", 3)  # a tenant's taken images no longer count as queued
    send(queue, "capped", 1, cap=4)
    assert_counts_in_step(queue)


def test_withdraw_takes_back_from_the_tenants_lane(queue):
    refs = send(queue, "gone", 2)
    assert queue.withdraw("gone-1", [0], tenant="gone") == (1, [])
    assert queued(queue, tenant="gone") == [refs[0]] and queue.depth() == 1
    assert queue.withdraw("gone-0", [0], tenant="gone") == (1, [])
    assert queue.redis.zcard(queue.keys.active(INTERACTIVE)) == 0
    assert leftover_keys(queue.redis, Q) == []


def test_another_tenants_job_cannot_be_cancelled(queue):
    submit_job(queue, "owner", "ownedjob", 3)
    assert queue.cancel_job("ownedjob", tenant="intruder") == {}
    assert queue.cancel_job("ownedjob") == {}  # nor by requests without a tenant
    assert queue.redis.hget(queue.keys.job("ownedjob"), "status") == b"queued"
    assert queue.depth(BULK) == 3
    assert queue.cancel_job("ownedjob", tenant="owner")["tenant"] == "owner"
    assert queue.depth(BULK) == 0 and queue.redis.zcard(queue.keys.active(BULK)) == 0
    assert_counts_in_step(queue)


def test_without_tenants_everything_is_one_tenant_as_before(queue):
    refs = fill(queue, 5)
    assert queued(queue, tenant=DEFAULT_TENANT) == refs
    assert queue.take("w", 5).interactive == refs  # one tenant: strictly in order
    assert queue.redis.lrange(queue.keys.owners("w"), 0, -1) == [DEFAULT_TENANT.encode()] * 5
