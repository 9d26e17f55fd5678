"""A failure ending has one writer (workers.runner.record_failure, called by Celery's
task_failure signal), on fakeredis with the records store wrapped: a handler's failure,
where Celery calls HandlerTask.on_failure and then sends the signal, ends the record with
one script call; a failure that never reaches the task class (a lost worker, a rejected
message) is ended by the signal alone."""

from __future__ import annotations

import time
import warnings
from typing import Any

import pytest
from billiard.exceptions import WorkerLostError
from celery.exceptions import CDeprecationWarning, Reject
from celery.signals import task_failure

import bo_queue
import workers.lifecycle  # noqa: F401  (connects the task_failure receiver)
from bo_queue import BOQueue, TaskState
from bo_queue.context import TaskContext
from bo_queue.states import Priority
from workers.runner import HandlerTask, bind_handlers

NAME = "unit.failure.boom"
hook_saw: list[TaskState | None] = []


def _on_failure_hook(ctx: TaskContext, exc: BaseException) -> None:
    info = ctx.bq.records.get(ctx.task_id)
    hook_saw.append(None if info is None else info.state)


@bo_queue.handler(NAME, on_failure=_on_failure_hook)
def _boom(payload: dict[str, Any], ctx: TaskContext) -> None:
    raise ValueError("boom")


@pytest.fixture
def task(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> HandlerTask:
    with warnings.catch_warnings():  # Celery 5.7 deprecates the `queue` task attribute
        warnings.simplefilter("ignore", CDeprecationWarning)
        bind_handlers(bq.app, bq)
    bound = bq.app.tasks[NAME]
    assert isinstance(bound, HandlerTask)
    # Celery shares a task with every app made later in the process (a worker has one):
    # this test's task must use this test's BOQueue.
    monkeypatch.setattr(type(bound), "bq", bq)
    return bound


@pytest.fixture
def endings(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, TaskState]]:
    """(task id, state) of every record transition script call."""
    calls: list[tuple[str, TaskState]] = []
    transition = bq.records.transition

    def counted(task_id: str, state: TaskState, **kwargs: Any) -> bool:
        calls.append((task_id, state))
        return transition(task_id, state, **kwargs)

    monkeypatch.setattr(bq.records, "transition", counted)
    return calls


def running(bq: BOQueue, task_id: str) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {"id": task_id, "handler": NAME, "queue": "default",
                                 "priority": Priority.NORMAL, "tags": (), "parent_id": None,
                                 "state": TaskState.QUEUED, "created_at": time.time(),
                                 "due_at": None, "expires_at": None})
        pipe.execute()
    assert bq.records.start(task_id, "w1@host", NAME, "default", Priority.NORMAL)[0] == "run"


def failed(task: HandlerTask, task_id: str, exc: BaseException) -> None:
    task_failure.send(sender=task, task_id=task_id, exception=exc, args=[{}], kwargs={},
                      traceback=None, einfo=None)


def test_a_handler_failure_ends_its_record_once(
    bq: BOQueue, task: HandlerTask, endings: list[tuple[str, TaskState]]
) -> None:
    running(bq, "t1")
    hook_saw.clear()
    exc = ValueError("boom")
    task.push_request(id="t1", bo_context=TaskContext(bq, "t1", NAME, 1, 0))
    try:  # what Celery's trace does after storing the failure
        task.on_failure(exc, "t1", [{}], {}, None)
        failed(task, "t1", exc)
    finally:
        task.pop_request()
    assert endings == [("t1", TaskState.FAILED)]
    info = bq.records.get("t1")
    assert info is not None and info.state is TaskState.FAILED
    assert info.error == "ValueError: boom"
    assert hook_saw == [TaskState.FAILED]  # the hook runs once the record says so


@pytest.mark.parametrize("exc", [WorkerLostError("lost"), Reject("refused", requeue=False)])
def test_a_failure_outside_the_task_class_is_ended_by_the_signal(
    bq: BOQueue, task: HandlerTask, endings: list[tuple[str, TaskState]], exc: BaseException
) -> None:
    running(bq, "t2")
    failed(task, "t2", exc)
    assert endings == [("t2", TaskState.FAILED)]
    info = bq.records.get("t2")
    assert info is not None and info.state is TaskState.FAILED
    assert info.error and type(exc).__name__ in info.error


def test_on_failure_alone_writes_no_ending(
    bq: BOQueue, task: HandlerTask, endings: list[tuple[str, TaskState]]
) -> None:
    running(bq, "t3")
    task.on_failure(ValueError("boom"), "t3", [{}], {}, None)
    assert endings == []
