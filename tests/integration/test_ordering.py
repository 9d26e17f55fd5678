"""One worker of concurrency 1, held busy by a gate task, so the tests decide exactly what
is queued behind it: priorities at the broker, expiry, and cancelling queued tasks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from bo_queue import BOQueue, Priority, TaskCancelledError, TaskExpiredError, TaskState
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster


@pytest.fixture(scope="module")
def single(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=1)
    yield c
    c.close()


@pytest.fixture
def gated(single: Cluster, evidence: redis.Redis) -> Iterator[tuple[BOQueue, str]]:
    """The worker is busy with a gate task; open it with evidence.set(key, 1)."""
    bq = single.producer()
    key = f"evidence:gate:{uuid.uuid4().hex}"
    gate = bq.submit("t.gate", {"key": key})
    wait_until(lambda: evidence.exists(key + ":entered"), 20, what="the gate task to start")
    yield bq, key
    evidence.set(key, 1)
    assert gate.get(timeout=20) == "opened"


def test_critical_overtakes_two_hundred_low_tasks(
    gated: tuple[BOQueue, str], evidence: redis.Redis
) -> None:
    bq, key = gated
    order = f"evidence:order:{uuid.uuid4().hex}"
    low = bq.submit_many(
        {"handler": "t.record_order", "payload": {"list": order, "label": f"low{i}"},
         "priority": Priority.LOW}
        for i in range(200)
    )
    critical = bq.submit(
        "t.record_order", {"list": order, "label": "critical"}, priority=Priority.CRITICAL
    )
    evidence.set(key, 1)
    critical.get(timeout=30)
    for h in low:
        h.get(timeout=60)
    ran = evidence.lrange(order, 0, -1)
    assert len(ran) == 201
    assert ran.index("critical") <= 2, ran[:5]
    assert ran[ran.index("critical") + 1 :][:3] == ["low0", "low1", "low2"] or ran[0] == "critical"


def test_every_priority_level_is_served_in_order(
    gated: tuple[BOQueue, str], evidence: redis.Redis
) -> None:
    bq, key = gated
    order = f"evidence:order:{uuid.uuid4().hex}"
    levels = [Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.URGENT, Priority.CRITICAL]
    handles = bq.submit_many(
        {"handler": "t.record_order", "payload": {"list": order, "label": p.name}, "priority": p}
        for p in levels * 3
    )
    evidence.set(key, 1)
    for h in handles:
        h.get(timeout=30)
    ran = evidence.lrange(order, 0, -1)
    assert ran == [p.name for p in reversed(levels) for _ in range(3)]


def test_expired_task_never_runs(gated: tuple[BOQueue, str], evidence: redis.Redis) -> None:
    bq, key = gated
    h = bq.submit("t.echo", {"x": 1}, expires=0.5)
    wait_until(lambda: h.state is TaskState.EXPIRED, 10, what="expiry to pass")
    evidence.set(key, 1)
    with pytest.raises(TaskExpiredError):
        h.get(timeout=10)
    # once the worker has taken the message off the queue, its own record says so too
    sentinel = bq.submit("t.echo", {}, priority=Priority.LOW)
    sentinel.get(timeout=20)
    assert bq.records.get(h.id).state is TaskState.EXPIRED  # type: ignore[union-attr]
    assert not evidence.hexists("evidence:runs", h.id)


def test_cancel_by_tag_of_fifty_queued_tasks(
    gated: tuple[BOQueue, str], evidence: redis.Redis
) -> None:
    bq, key = gated
    tag = f"batch-{uuid.uuid4().hex[:6]}"
    doomed = bq.submit_many({"handler": "t.echo", "payload": {"i": i}, "tags": [tag]}
                            for i in range(50))
    keeper = bq.submit("t.echo", {"keep": True}, tags=("other",))
    cancelled = bq.cancel_tag(tag)
    assert sorted(cancelled) == sorted(h.id for h in doomed)
    assert all(h.state is TaskState.CANCELLED for h in doomed)
    evidence.set(key, 1)
    # the sentinel is queued behind all 50 at the same priority: once it ran, they were seen
    sentinel = bq.submit("t.echo", {"sentinel": True})
    assert sentinel.get(timeout=30) == {"sentinel": True}
    assert keeper.get(timeout=10) == {"keep": True}
    ran = [h.id for h in doomed if evidence.hexists("evidence:runs", h.id)]
    assert ran == []
    for h in doomed:
        assert bq.info(h.id).attempts == 0
        with pytest.raises(TaskCancelledError):
            h.get(timeout=5)
    assert bq.cancel_tag(tag) == []  # nothing left to cancel


def test_cancel_a_queued_task_by_id(gated: tuple[BOQueue, str], evidence: redis.Redis) -> None:
    bq, key = gated
    h = bq.submit("t.echo", {})
    assert h.cancel() is TaskState.CANCELLED
    assert bq.cancel(h.id) is TaskState.CANCELLED  # idempotent
    evidence.set(key, 1)
    bq.submit("t.echo", {}).get(timeout=20)
    assert not evidence.hexists("evidence:runs", h.id)
    with pytest.raises(TaskCancelledError):
        h.get(timeout=5)
