"""BO_QUEUE_LOG_JSON=true: a real worker's log is JSON lines, with the task's fields on what
a handler logs through ctx.log and on Celery's own lines about the task."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bo_queue.testing import WorkerProcess, wait_until
from tests.conftest import Cluster, make_cluster


@pytest.fixture(scope="module")
def json_cluster(redis_url: str) -> Iterator[Cluster]:
    cluster = make_cluster(redis_url, workers=1, concurrency=1, log_json="true")
    yield cluster
    cluster.close()


def _json_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    # Only Python's own warnings at import time (before logging is set up) and Celery's
    # "Warm shutdown" notice, printed from a signal handler, are not JSON.
    lines = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # a line that starts like JSON must be JSON
    return lines


def test_handler_and_celery_lines_are_json_with_task_fields(json_cluster: Cluster) -> None:
    worker = json_cluster.workers[0]
    handle = json_cluster.producer().submit("t.logs", {"who": "world"})
    assert handle.get(timeout=30) == "logged world"

    def for_task() -> list[dict[str, Any]]:
        return [e for e in _json_lines(worker) if e.get("task_id") == handle.id]

    wait_until(lambda: any("succeeded" in e["message"] for e in for_task()), 10,
               what="the worker to log the task's success")
    entries = for_task()
    hello = [e for e in entries if e["message"] == "hello world"]
    assert len(hello) == 1, entries
    assert hello[0]["handler"] == "t.logs"
    assert hello[0]["attempt"] == 1
    assert hello[0]["level"] == "INFO"
    assert hello[0]["logger"] == "bo_queue.task.t.logs"
    assert hello[0]["worker"] == worker.hostname
    assert hello[0]["time"].endswith("Z")

    succeeded = [e for e in entries if e["message"].startswith(f"Task t.logs[{handle.id}] succ")]
    assert len(succeeded) == 1, entries
    assert succeeded[0]["logger"] == "celery.app.trace"
    assert succeeded[0]["handler"] == "t.logs"
    assert succeeded[0]["worker"] == worker.hostname

    # the worker's own lines are JSON too, and no banner precedes them
    assert "[queues]" not in worker.log()
    ready = [e for e in _json_lines(worker) if e["message"] == f"{worker.hostname} ready."]
    assert ready and ready[0]["logger"] == "celery.apps.worker"


def test_a_failing_task_logs_its_error_and_traceback(json_cluster: Cluster) -> None:
    worker = json_cluster.workers[0]
    handle = json_cluster.producer().submit("t.logs", {})  # no "who": KeyError in the handler
    with pytest.raises(Exception, match="who"):
        handle.get(timeout=30)

    def failure() -> list[dict[str, Any]]:
        return [e for e in _json_lines(worker)
                if e.get("task_id") == handle.id and e["level"] == "ERROR"]

    wait_until(failure, 10, what="the worker to log the task's failure")
    entry = failure()[0]
    assert entry["handler"] == "t.logs"
    assert entry["error"].startswith("KeyError")
    assert "Traceback" in entry["traceback"] and "handlers.py" in entry["traceback"]


def test_a_study_evaluation_logs_its_study_id(json_cluster: Cluster) -> None:
    worker = json_cluster.workers[0]
    handle = json_cluster.producer().submit("t.logs", {"who": "lab", "study_id": "s-42"})
    assert handle.get(timeout=30) == "logged lab"

    def hello() -> list[dict[str, Any]]:
        return [e for e in _json_lines(worker)
                if e.get("task_id") == handle.id and e["message"] == "hello lab"]

    wait_until(hello, 10, what="the handler's line")
    assert hello()[0]["study_id"] == "s-42"
