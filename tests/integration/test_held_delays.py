"""Delays longer than `hold_delays_over_s` wait in Redis, not in a worker's memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bo_queue import BOQueue, TaskCancelledError, TaskState
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster


@pytest.fixture(scope="module")
def held(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=2, hold_delays_over_s="1")
    yield c
    c.close()


@pytest.fixture
def bq(held: Cluster) -> BOQueue:
    return held.producer()


def _held_ids(evidence: redis.Redis, bq: BOQueue) -> list[str]:
    return list(evidence.zrange(bq.keys.delayed, 0, -1))


def test_long_countdown_is_held_in_redis_then_runs(bq: BOQueue, evidence: redis.Redis) -> None:
    h = bq.submit("t.echo", {"later": True}, countdown=2.0)
    assert h.state is TaskState.PENDING
    assert h.id in _held_ids(evidence, bq)
    assert h.get(timeout=20) == {"later": True}
    assert h.id not in _held_ids(evidence, bq)
    info = bq.info(h.id)
    assert info.started_at is not None
    assert (info.started_at - info.created_at).total_seconds() >= 1.9


def test_long_retry_backoff_is_held_in_redis(bq: BOQueue, evidence: redis.Redis) -> None:
    h = bq.submit("t.long_backoff", {})
    wait_until(lambda: h.state is TaskState.RETRYING, 20, what="the first attempt to fail")
    assert h.id in _held_ids(evidence, bq)
    assert h.get(timeout=30) == {"attempt": 2}
    times = [float(t) for t in evidence.lrange(f"evidence:attempts:{h.id}", 0, -1)]
    assert len(times) == 2 and times[1] - times[0] >= 2.4  # backoff 2.5 s, no jitter


def test_cancelling_a_held_task_removes_it(bq: BOQueue, evidence: redis.Redis) -> None:
    h = bq.submit("t.echo", {}, countdown=60)
    assert h.id in _held_ids(evidence, bq)
    assert bq.cancel(h.id) is TaskState.CANCELLED
    assert h.id not in _held_ids(evidence, bq)
    with pytest.raises(TaskCancelledError):
        h.get(timeout=5)
