"""Cancelling tasks that are already running, and tasks held for later."""

from __future__ import annotations

import time

import pytest
import redis

from bo_queue import BOQueue, TaskCancelledError, TaskState
from bo_queue.testing import wait_until


def test_running_task_sees_cancellation_and_ends_cancelled(bq: BOQueue) -> None:
    h = bq.submit("t.progress", {"steps": 100, "step_s": 0.1})
    wait_until(lambda: h.progress.fraction > 0, 20, what="the task to start")
    assert h.cancel() is TaskState.RUNNING  # it stops at its next check
    with pytest.raises(TaskCancelledError):
        h.get(timeout=10)
    info = bq.info(h.id)
    assert info.state is TaskState.CANCELLED and info.progress < 1


def test_terminate_kills_a_task_that_does_not_check(bq: BOQueue, evidence: redis.Redis) -> None:
    h = bq.submit("t.sleep", {"seconds": 60})
    wait_until(lambda: evidence.exists(f"evidence:started:{h.id}"), 20, what="the task to start")
    started = time.monotonic()
    h.cancel(terminate=True)
    with pytest.raises(TaskCancelledError):
        h.get(timeout=15)
    assert time.monotonic() - started < 15
    wait_until(lambda: bq.records.get(h.id).state is TaskState.CANCELLED, 10,  # type: ignore[union-attr]
               what="the record to say CANCELLED")
    # the worker process that ran it was replaced and the pool still works
    assert bq.submit("t.echo", {"after": 1}).get(timeout=20) == {"after": 1}


def test_cancel_a_task_waiting_for_its_countdown(bq: BOQueue, evidence: redis.Redis) -> None:
    h = bq.submit("t.echo", {}, countdown=1.0)
    assert h.cancel() is TaskState.CANCELLED
    later = bq.submit("t.echo", {}, countdown=1.5)
    later.get(timeout=20)  # past the cancelled task's due time
    assert not evidence.hexists("evidence:runs", h.id)
    assert h.state is TaskState.CANCELLED
