"""render_status on fakeredis: queues, workers, a running study and the totals."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from bo_queue import BOQueue, Priority, TaskState
from bo_queue.errors import BrokerUnavailableError
from bo_queue.monitor.status import progress_bar, render_status
from bo_queue.studies.models import Objective, Range, Strategy, StudyStatus, Trial, TrialStatus


def heartbeat(bq: BOQueue, hostname: str, queues: list[str], active: int = 0,
              age_s: float = 0.5) -> None:
    at = time.time() - age_s
    bq.redis.hset(bq.keys.workers, hostname, json.dumps({
        "at": at, "queues": queues, "concurrency": 4, "active": active, "pid": 4242,
        "started_at": at - 60,
    }))


def create(bq: BOQueue, task_id: str, queue: str = "default",
           priority: Priority = Priority.NORMAL, age_s: float = 0.0) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {
            "id": task_id, "handler": "train.fit", "queue": queue, "priority": priority,
            "state": TaskState.QUEUED, "created_at": time.time() - age_s,
        })
        pipe.execute()


def enqueue(bq: BOQueue, task_id: str, queue: str, priority: Priority, age_s: float) -> None:
    create(bq, task_id, queue, priority, age_s)
    suffix = f":{priority.broker_priority}" if priority.broker_priority else ""
    bq.redis.lpush(bq.keys.broker_prefix + queue + suffix,
                   json.dumps({"headers": {"id": task_id}, "body": ""}))


def finish(bq: BOQueue, task_id: str, state: TaskState) -> None:
    create(bq, task_id)
    assert bq.records.start(task_id, "w1@host", "train.fit", "default", Priority.NORMAL)[0] == "run"
    assert bq.records.transition(task_id, state, finished_at=time.time())


def study(bq: BOQueue, name: str, completed: int, status: StudyStatus,
          max_trials: int = 30) -> str:
    studies = bq.studies
    created = studies.create(name, [Range("x", 0.0, 1.0)], [Objective("loss")],
                             Strategy(initial_trials=5, max_trials=max_trials))
    path = {
        StudyStatus.ACTIVE: (StudyStatus.INITIALIZING, StudyStatus.ACTIVE),
        StudyStatus.PAUSED: (StudyStatus.INITIALIZING, StudyStatus.ACTIVE, StudyStatus.PAUSED),
        StudyStatus.COMPLETED: (StudyStatus.INITIALIZING, StudyStatus.ACTIVE,
                                StudyStatus.COMPLETED),
    }[status]
    for to in path:
        current = studies.get(created.id).status
        assert studies.store.set_status(created.id, to, {current}) is to
    now = datetime.now(UTC)
    trials = [Trial(index=i, params={"x": 0.5}, status=TrialStatus.COMPLETED,
                    values={"loss": 2.0 - 0.125 * i}, created_at=now, finished_at=now)
              for i in range(completed)]
    studies.store.save_step(created.model_copy(update={"completed_trials": completed}),
                            trials, None, 0)
    return created.id


@pytest.fixture
def busy(bq: BOQueue) -> BOQueue:
    enqueue(bq, "q1", "default", Priority.HIGH, age_s=75)
    enqueue(bq, "q2", "default", Priority.HIGH, age_s=10)
    enqueue(bq, "q3", "evaluate", Priority.NORMAL, age_s=5)
    heartbeat(bq, "alpha@node1", ["default", "bo"], active=3)
    heartbeat(bq, "ghost@node9", ["evaluate"], age_s=bq.settings.heartbeat_timeout_s + 5)
    for i in range(9):
        finish(bq, f"ok{i}", TaskState.SUCCEEDED)
    finish(bq, "bad", TaskState.FAILED)
    return bq


def test_queues_workers_studies_and_totals(busy: BOQueue) -> None:
    study_id = study(busy, "tune-lr", completed=12, status=StudyStatus.ACTIVE)
    paused_id = study(busy, "tune-wd", completed=30, status=StudyStatus.PAUSED)
    done_id = study(busy, "finished", completed=30, status=StudyStatus.COMPLETED)

    page = render_status(busy.monitor)
    lines = page.splitlines()
    assert all(len(line) <= 100 for line in lines)

    # every configured queue is listed, even empty; only priorities with messages are
    for queue in busy.settings.queues:
        assert any(line.split()[:1] == [queue] for line in lines), queue
    default = [line.split() for line in lines if line.split()[:1] == ["default"]]
    assert default == [["default", "high", "2", "1m15s"]]  # oldest first: 75 s
    evaluate = [line.split() for line in lines if line.split()[:1] == ["evaluate"]]
    assert evaluate[0][:3] == ["evaluate", "normal", "1"]
    assert 5.0 <= float(evaluate[0][3].rstrip("s")) < 7.0  # 5 s old, plus a slow machine
    assert ["bo", "-", "0", "-"] in [line.split() for line in lines]
    assert "QUEUES  3 waiting" in page

    # live workers only
    worker = next(line for line in lines if "alpha@node1" in line)
    assert worker.split()[:4] == ["alpha@node1", "default,bo", "4", "3"]
    assert "ghost@node9" not in page
    assert "WORKERS  1 alive, 3/4 busy" in page

    # running studies with a progress bar and best value; finished ones are not shown
    running = next(line for line in lines if study_id in line)
    assert "[########............] 12/30" in running
    assert "ACTIVE" in running and "tune-lr" in running
    assert "loss=0.625 (min)" in running  # 2.0 - 0.125 * 11
    paused = next(line for line in lines if paused_id in line)
    assert "[####################] 30/30" in paused and "PAUSED" in paused
    assert done_id not in page
    assert lines.index(running) < lines.index(paused)  # active first

    # totals over five minutes
    assert "throughput 2.0/min" in page  # 10 ended in 5 min
    assert "succeeded 9" in page and "failed 1" in page
    assert "failure rate 10.0%" in page


def test_narrow_terminal(busy: BOQueue) -> None:
    study_id = study(busy, "tune-lr", completed=12, status=StudyStatus.ACTIVE)
    page = render_status(busy.monitor, width=70)
    assert all(len(line) <= 70 for line in page.splitlines())
    assert "[####......] 12/30" in next(x for x in page.splitlines() if study_id in x)


def test_an_idle_deployment(bq: BOQueue) -> None:
    page = render_status(bq.monitor)
    assert "WORKERS  none alive" in page
    assert "STUDIES  none active or paused" in page
    assert "QUEUES  0 waiting" in page
    assert "failure rate -" in page


def test_redis_down(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailableError("Redis at redis://127.0.0.1:1/0 is unavailable")

    monkeypatch.setattr(bq.monitor, "queues", down)
    page = render_status(bq.monitor)
    assert "redis unreachable" in page


def test_metrics_failing_keeps_the_rest(busy: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailableError("gone mid-page")

    monkeypatch.setattr(busy.monitor, "metrics", broken)
    page = render_status(busy.monitor)
    assert "alpha@node1" in page
    assert "metrics unavailable: gone mid-page" in page


@pytest.mark.parametrize(("done", "total", "width", "bar"), [
    (0, 30, 10, "[..........] 0/30"),
    (12, 30, 10, "[####......] 12/30"),
    (30, 30, 10, "[##########] 30/30"),
    (35, 30, 10, "[##########] 35/30"),
    (1, 3, 6, "[##....] 1/3"),
])
def test_progress_bar(done: int, total: int, width: int, bar: str) -> None:
    assert progress_bar(done, total, width) == bar


def test_tasks_now_counts_every_state_within_the_width(busy: BOQueue) -> None:
    with busy.redis.pipeline(transaction=False) as pipe:
        for i in range(3):
            busy.records.create(pipe, {
                "id": f"now{i}", "handler": "unit.h", "queue": "default", "priority": 5,
                "tags": (), "parent_id": None, "state": "QUEUED", "created_at": time.time()})
        pipe.execute()
    page = render_status(busy.monitor)
    summary = busy.monitor.summary()
    assert summary.by_state["QUEUED"] >= 3
    assert f"TASKS NOW  {summary.total} in all" in page
    section = page.split("TASKS NOW", 1)[1].split("\n\n", 1)[0]
    for state, count in summary.by_state.items():
        assert f"{state.lower()} {count}" in section
    narrow = render_status(busy.monitor, width=40)
    assert all(len(line) <= 40 for line in narrow.splitlines() if "~" not in line)
    assert "expired" in narrow.split("TASKS NOW", 1)[1]  # wrapped, not cut


def test_summary_failing_keeps_the_rest(busy: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailableError("gone mid-page")

    monkeypatch.setattr(busy.monitor, "summary", broken)
    page = render_status(busy.monitor)
    assert "summary unavailable: gone mid-page" in page and "alpha@node1" in page
