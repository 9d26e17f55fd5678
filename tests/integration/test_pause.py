"""Pause and resume (tasks and queues), update, and a dependency added later, against one
real worker of concurrency 1 that a gate task holds busy, so each test decides exactly
what waits in the queue behind it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from bo_queue import (
    BOQueue,
    DependencyError,
    Priority,
    TaskState,
    UnknownTaskError,
    ValidationError,
)
from bo_queue.core.message import Message, envelope_task_id
from bo_queue.monitor.health import check_health
from bo_queue.monitor.status import render_status
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster


@pytest.fixture(scope="module")
def single(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=1)
    yield c
    c.close()


@pytest.fixture
def bq(single: Cluster) -> Iterator[BOQueue]:
    bq = single.producer()
    yield bq
    bq.resume_queue("default")  # a failed test leaves no paused queue behind


@pytest.fixture
def gate(bq: BOQueue, evidence: redis.Redis) -> Iterator[str]:
    """The worker is busy with a gate task; open it with evidence.set(key, 1)."""
    key = f"evidence:gate:{uuid.uuid4().hex}"
    handle = bq.submit("t.gate", {"key": key})
    wait_until(lambda: evidence.exists(key + ":entered"), 20, what="the gate task to start")
    yield key
    evidence.set(key, 1)
    assert handle.get(timeout=20) == "opened"


def _runs(evidence: redis.Redis, task_id: str) -> int:
    return int(evidence.hget("evidence:runs", task_id) or 0)


def _in_list(evidence: redis.Redis, key: str, task_id: str) -> bool:
    return task_id in [envelope_task_id(raw) for raw in evidence.lrange(key, 0, -1)]


# -- pausing a task -------------------------------------------------------------------------


def test_a_paused_task_is_held_back_by_the_worker_then_runs_once_resumed(
    bq: BOQueue, gate: str, evidence: redis.Redis
) -> None:
    h = bq.submit("t.echo", {"n": 1})
    assert bq.pause(h.id) is TaskState.PAUSED
    assert bq.pause(h.id) is TaskState.PAUSED  # again: nothing changes
    assert [t.id for t in bq.tasks(TaskState.PAUSED)] == [h.id]
    evidence.set(gate, 1)  # the worker takes its message, and keeps it in Redis instead
    wait_until(lambda: evidence.hexists(bq.keys.paused, h.id), 20,
               what="the worker to hold the paused task back")
    assert h.state is TaskState.PAUSED and _runs(evidence, h.id) == 0
    assert bq.summary().by_state["PAUSED"] == 1
    assert bq.resume(h.id) is TaskState.QUEUED
    assert h.get(timeout=20) == {"n": 1}
    assert _runs(evidence, h.id) == 1
    assert not evidence.hexists(bq.keys.paused, h.id)
    with pytest.raises(ValidationError, match="not paused"):
        bq.resume(h.id)


def test_a_task_paused_during_its_countdown_waits_past_it(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    h = bq.submit("t.echo", {"later": True}, countdown=1.0)
    assert bq.pause(h.id) is TaskState.PAUSED
    wait_until(lambda: evidence.hexists(bq.keys.paused, h.id), 20,
               what="the worker to hold the task back once due")
    assert h.state is TaskState.PAUSED and _runs(evidence, h.id) == 0
    bq.resume(h.id)
    assert h.get(timeout=20) == {"later": True}


def test_pause_refuses_started_and_unknown_tasks(bq: BOQueue, evidence: redis.Redis) -> None:
    done = bq.submit("t.echo", {})
    done.get(timeout=20)
    wait_until(lambda: done.state is TaskState.SUCCEEDED, 10, what="the record to end")
    with pytest.raises(ValidationError, match="has started or ended"):
        bq.pause(done.id)
    assert done.state is TaskState.SUCCEEDED
    with pytest.raises(UnknownTaskError):
        bq.pause("no-such-task")
    with pytest.raises(UnknownTaskError):
        bq.resume("no-such-task")


def test_cancelling_a_held_back_paused_task_drops_its_message(
    bq: BOQueue, gate: str, evidence: redis.Redis
) -> None:
    h = bq.submit("t.echo", {})
    bq.pause(h.id)
    evidence.set(gate, 1)
    wait_until(lambda: evidence.hexists(bq.keys.paused, h.id), 20, what="the hold")
    assert bq.cancel(h.id) is TaskState.CANCELLED
    assert not evidence.hexists(bq.keys.paused, h.id)
    with pytest.raises(ValidationError):
        bq.resume(h.id)


# -- pausing a queue ------------------------------------------------------------------------


def test_a_paused_queue_starts_nothing_and_says_so_until_resumed(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    bq.pause_queue("default")
    assert bq.paused_queues() == ["default"]
    handles = [bq.submit("t.echo", {"i": i}) for i in range(3)]
    held = bq.keys.queue_held("default")
    wait_until(lambda: evidence.hlen(held) == 3, 20, what="the worker to hold all three back")
    assert all(h.state is TaskState.QUEUED for h in handles)
    assert all(_runs(evidence, h.id) == 0 for h in handles)

    stats = [s for s in bq.monitor.queues() if s.queue == "default"]
    assert all(s.paused for s in stats) and sum(s.held for s in stats) == 3
    assert [s.held for s in stats if s.priority is Priority.NORMAL] == [3]
    report = check_health(bq.monitor, require_beat=False, max_queue_age_s=0.001)
    age = next(c for c in report.checks if c.name == "queue_age:default")
    assert age.ok and age.detail.startswith("paused")
    assert "default (paused, 3 held)" in render_status(bq.monitor, width=120)

    # a suspected loss does not send the held-back messages again
    bq.outbox.suspect("test")
    assert bq.outbox.reconcile(bq.send, lambda: ["default"], settle_s=0.1) == []

    assert bq.resume_queue("default") == 3
    assert bq.paused_queues() == []
    assert [h.get(timeout=20) for h in handles] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert all(_runs(evidence, h.id) == 1 for h in handles)
    assert not evidence.exists(held)


def test_pausing_an_unknown_queue_is_an_error(bq: BOQueue, evidence: redis.Redis) -> None:
    with pytest.raises(ValidationError, match="unknown queue 'nope'"):
        bq.pause_queue("nope")
    assert not evidence.exists(bq.keys.paused_queues)


# -- update ---------------------------------------------------------------------------------


def test_update_moves_a_queued_message_to_its_new_priority(
    bq: BOQueue, gate: str, evidence: redis.Redis
) -> None:
    order = f"evidence:order:{uuid.uuid4().hex}"
    low = [bq.submit("t.record_order", {"list": order, "label": f"low{i}"}, priority="low")
           for i in range(5)]
    prefix = bq.keys.broker_prefix + "default"
    last = low[-1].id
    assert _in_list(evidence, f"{prefix}:{Priority.LOW.broker_priority}", last)
    info = bq.update(last, priority="critical", name="rush", metadata={"why": "late"})
    assert info.priority is Priority.CRITICAL and info.name == "rush"
    assert info.metadata == {"why": "late"} and info.state is TaskState.QUEUED
    assert _in_list(evidence, prefix, last)  # the critical list (broker priority 0)
    assert not _in_list(evidence, f"{prefix}:{Priority.LOW.broker_priority}", last)
    kept = Message.decode(evidence.hget(bq.keys.outbox, last) or "")
    assert kept.priority == Priority.CRITICAL.broker_priority
    evidence.set(gate, 1)
    for h in low:
        h.get(timeout=20)
    ran = evidence.lrange(order, 0, -1)
    assert ran.index("low4") <= 1, ran  # one low task may already sit in the worker


def test_update_rewrites_a_held_message_and_refuses_started_tasks(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    later = bq.submit("t.echo", {}, countdown=600)
    bq.update(later.id, priority=Priority.HIGH, description="soon")
    spec = Message.decode(evidence.hget(bq.keys.delayed_specs, later.id) or "")
    assert spec.priority == Priority.HIGH.broker_priority
    assert bq.info(later.id).description == "soon"
    bq.cancel(later.id)

    done = bq.submit("t.echo", {})
    done.get(timeout=20)
    wait_until(lambda: done.state is TaskState.SUCCEEDED, 10, what="the record to end")
    with pytest.raises(ValidationError, match="has started or ended"):
        bq.update(done.id, name="late")
    assert bq.info(done.id).name is None
    with pytest.raises(ValidationError, match="priority"):
        bq.update(later.id, priority="soonest")
    with pytest.raises(ValidationError, match="give priority"):
        bq.update(later.id)
    with pytest.raises(UnknownTaskError):
        bq.update("no-such-task", name="x")


# -- a dependency added later ---------------------------------------------------------------


def test_a_queued_task_given_a_dependency_waits_for_it(
    bq: BOQueue, gate: str, evidence: redis.Redis
) -> None:
    log = f"evidence:log:{uuid.uuid4().hex}"
    late = bq.submit("t.node", {"log": log, "value": 1})
    first = bq.submit("t.node", {"log": log, "value": 10})
    info = bq.add_dependency(late.id, first)
    assert info.state is TaskState.PENDING and info.depends_on == (first.id,)
    evidence.set(gate, 1)  # the worker takes `late` first, and holds it until `first` is done
    assert late.get(timeout=20) == 11  # 1 + the result of its dependency
    assert evidence.lrange(log, 0, -1) == [
        f"start:{first.id}", f"end:{first.id}", f"start:{late.id}", f"end:{late.id}"
    ]
    assert [n.id for n in bq.graph([late.id]).nodes.values()] == [late.id, first.id]


def test_a_paused_task_given_a_dependency_waits_for_it_after_resume(
    bq: BOQueue, gate: str, evidence: redis.Redis
) -> None:
    log = f"evidence:log:{uuid.uuid4().hex}"
    h = bq.submit("t.node", {"log": log, "value": 1})
    bq.pause(h.id)
    evidence.set(gate, 1)
    wait_until(lambda: evidence.hexists(bq.keys.paused, h.id), 20, what="the hold")
    dep = bq.submit("t.node", {"log": log, "value": 2}, countdown=1.0)
    bq.add_dependency(h.id, [dep.id])
    assert bq.resume(h.id) is TaskState.PENDING  # it waits on `dep` now
    assert h.get(timeout=20) == 3
    assert evidence.lrange(log, 0, 1) == [f"start:{dep.id}", f"end:{dep.id}"]


def test_add_dependency_refuses_cycles_unknown_ids_and_started_tasks(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    a = bq.submit("t.echo", {}, countdown=600)
    b = bq.submit("t.echo", {}, depends_on=[a])
    c = bq.submit("t.echo", {}, depends_on=[b])
    with pytest.raises(DependencyError, match=f"cycle: {a.id} -> {c.id} -> {b.id} -> {a.id}"):
        bq.add_dependency(a.id, c.id)
    with pytest.raises(DependencyError, match="itself"):
        bq.add_dependency(a.id, a.id)
    with pytest.raises(DependencyError, match="unknown dependency"):
        bq.add_dependency(a.id, "no-such-task")
    assert bq.info(a.id).depends_on == () and not evidence.exists(bq.keys.waiting(a.id))
    done = bq.submit("t.echo", {})
    done.get(timeout=20)
    wait_until(lambda: done.state is TaskState.SUCCEEDED, 10, what="the record to end")
    with pytest.raises(ValidationError, match="has started or ended"):
        bq.add_dependency(done.id, a.id)
    assert bq.info(done.id).depends_on == ()
    failed = bq.submit("t.echo", {}, countdown=600)  # cancelled before any worker runs it
    bq.cancel(failed.id)
    with pytest.raises(DependencyError, match="already ended CANCELLED"):
        bq.add_dependency(a.id, failed.id)
    bq.cancel(a.id)
