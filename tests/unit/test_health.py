"""check_health on fakeredis: heartbeats as workers write them, the redbeat lock as beat
holds it, kombu-like messages on the queue lists."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from bo_queue import BOQueue, Priority, TaskState
from bo_queue.monitor.health import Check, HealthReport, beat_lock_key, check_health

QUEUES = ["default", "bo", "evaluate"]  # Settings' default queues


def heartbeat(bq: BOQueue, hostname: str, queues: list[str], age_s: float = 0.5) -> None:
    at = time.time() - age_s
    bq.redis.hset(bq.keys.workers, hostname, json.dumps({
        "at": at, "queues": queues, "concurrency": 2, "active": 0, "pid": 4242,
        "started_at": at - 60,
    }))


def hold_beat_lock(bq: BOQueue) -> None:
    """What redbeat's beat does: a redis-py Lock on the lock key, renewed every loop."""
    bq.redis.set(beat_lock_key(bq), "token", px=10_000)


def enqueue(bq: BOQueue, task_id: str, queue: str, age_s: float,
            priority: Priority = Priority.NORMAL) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {
            "id": task_id, "handler": "report.build", "queue": queue, "priority": priority,
            "state": TaskState.QUEUED, "created_at": time.time() - age_s,
        })
        pipe.execute()
    suffix = f":{priority.broker_priority}" if priority.broker_priority else ""
    bq.redis.lpush(bq.keys.broker_prefix + queue + suffix,
                   json.dumps({"headers": {"id": task_id}, "body": ""}))


def by_name(report: HealthReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


@pytest.fixture
def healthy(bq: BOQueue) -> BOQueue:
    heartbeat(bq, "w1@host", ["default", "bo"])
    heartbeat(bq, "w2@host", ["evaluate"])
    hold_beat_lock(bq)
    enqueue(bq, "t1", "default", age_s=20)
    return bq


def test_the_lock_key_is_redbeats_under_the_namespace(bq: BOQueue) -> None:
    # bo_queue.core.celery_app sets redbeat_key_prefix "{ns}:redbeat:"; redbeat appends ":lock"
    assert beat_lock_key(bq) == "unit:redbeat::lock"


def test_all_ok(healthy: BOQueue) -> None:
    report = check_health(healthy.monitor)
    assert report.ok, report.render()
    checks = by_name(report)
    assert list(checks) == ["redis", *(f"workers:{q}" for q in QUEUES), "beat",
                            *(f"queue_age:{q}" for q in QUEUES)]
    assert all(c.ok for c in report.checks)
    assert "w1@host" in checks["workers:default"].detail
    assert "1 waiting" in checks["queue_age:default"].detail
    assert checks["queue_age:bo"].detail == "empty"
    text = report.render()
    assert len(text.splitlines()) == len(report.checks)
    assert "FAIL" not in text
    name, ok, detail = report.checks[0]  # a check unpacks as (name, ok, detail)
    assert (name, ok) == ("redis", True) and detail.startswith("PING")


def test_a_queue_without_a_worker(healthy: BOQueue) -> None:
    healthy.redis.hdel(healthy.keys.workers, "w2@host")
    report = check_health(healthy.monitor)
    assert not report.ok
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["workers:evaluate"]
    assert "no live worker consumes 'evaluate'" in failed[0].detail
    line = next(x for x in report.render().splitlines() if x.startswith("workers:evaluate"))
    assert "FAIL" in line


def test_a_stale_heartbeat_counts_as_dead(healthy: BOQueue) -> None:
    heartbeat(healthy, "w2@host", ["evaluate"],
              age_s=healthy.settings.heartbeat_timeout_s + 1)
    checks = by_name(check_health(healthy.monitor))
    assert not checks["workers:evaluate"].ok
    assert checks["workers:default"].ok


def test_beat_lock_missing(healthy: BOQueue) -> None:
    healthy.redis.delete(beat_lock_key(healthy))
    report = check_health(healthy.monitor)
    assert not report.ok
    assert [c.name for c in report.checks if not c.ok] == ["beat"]
    assert "unit:redbeat::lock" in by_name(report)["beat"].detail
    # not asked for: no beat check at all
    relaxed = check_health(healthy.monitor, require_beat=False)
    assert relaxed.ok
    assert "beat" not in by_name(relaxed)


def test_an_old_queue(healthy: BOQueue) -> None:
    enqueue(healthy, "old", "bo", age_s=900, priority=Priority.HIGH)
    report = check_health(healthy.monitor)
    assert not report.ok
    checks = by_name(report)
    assert [c.name for c in report.checks if not c.ok] == ["queue_age:bo"]
    assert "oldest 900s (high)" in checks["queue_age:bo"].detail
    assert check_health(healthy.monitor, max_queue_age_s=1000).ok


def test_redis_down(healthy: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(healthy.redis, "ping", refused)
    report = check_health(healthy.monitor)
    assert not report.ok
    assert all(not c.ok for c in report.checks)
    assert len(report.checks) == 1 + 2 * len(QUEUES) + 1
    assert "Connection refused" in report.checks[0].detail
    assert all(c.detail == "redis unreachable" for c in report.checks[1:])
    assert all(" FAIL " in line for line in report.render().splitlines())


def test_redis_down_for_real(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fake at all: a BOQueue on a port nothing listens on."""
    with BOQueue(redis_url="redis://127.0.0.1:1/0", namespace="unit",
                 connect_timeout_s=1) as bq:
        report = check_health(bq.monitor, require_beat=False)
    assert not report.ok
    assert report.checks[0].name == "redis" and not report.checks[0].ok
