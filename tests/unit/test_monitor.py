"""bq.monitor on fakeredis: what the review of the monitoring change asked to pin down."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import redis

from bo_queue import BOQueue, BrokerUnavailableError, Priority, TaskState, ValidationError
from bo_queue.core.kernel import Submitted
from bo_queue.core.steps import Pipe, Steps
from bo_queue.monitor import webhooks
from bo_queue.monitor.manager import Event, WebhookSink
from bo_queue.testing import free_port
from tests.unit.fakes import fake_aq


def create(bq: BOQueue, task_id: str, *, state: TaskState = TaskState.QUEUED,
           created_at: float | None = None, **fields: Any) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {
            "id": task_id, "handler": "unit.h", "queue": "default",
            "priority": Priority.NORMAL, "tags": (), "parent_id": None, "state": state,
            "created_at": time.time() if created_at is None else created_at, **fields,
        })
        pipe.execute()


def events_of(bq: BOQueue, task_id: str) -> list[Event]:
    return [e for e in bq.monitor.events() if e.id == task_id]


def test_an_event_carries_only_its_own_error(bq: BOQueue) -> None:
    create(bq, "t1")
    bq.records.start("t1", "w", "unit.h", "default", Priority.NORMAL)
    bq.records.transition("t1", TaskState.RETRYING, error="ValueError: boom")
    bq.records.start("t1", "w", "unit.h", "default", Priority.NORMAL)
    bq.records.transition("t1", TaskState.SUCCEEDED, finished_at=time.time())
    states = [(e.state, e.error) for e in events_of(bq, "t1")]
    assert states == [("QUEUED", None), ("RUNNING", None), ("RETRYING", None),
                      ("RUNNING", None), ("SUCCEEDED", None)]
    create(bq, "t2")
    bq.records.transition("t2", TaskState.FAILED, error="KeyError: x")
    assert events_of(bq, "t2")[-1].error == "KeyError: x"


def test_queue_age_counts_from_when_the_task_became_due(bq: BOQueue) -> None:
    now = time.time()
    create(bq, "late", created_at=now - 3600, due_at=now - 5)  # a countdown of ~1 h
    bq.redis.lpush(bq.keys.broker_prefix + "default:6", json.dumps({"headers": {"id": "late"}}))
    stats = {(s.queue, s.priority): s for s in bq.monitor.queues()}
    age = stats[("default", Priority.NORMAL)].oldest_age_s
    assert age is not None and 4 <= age < 60


def test_listings_page_through_indexes_newest_first_and_find_expired(bq: BOQueue) -> None:
    now = time.time()
    for i in range(1200):
        create(bq, f"q{i:04}", created_at=now - 2000 + i)
    create(bq, "gone", created_at=now - 10, expires_at=now - 1)
    newest = bq.tasks(TaskState.QUEUED, limit=3)
    assert [t.id for t in newest] == ["q1199", "q1198", "q1197"]
    assert "gone" not in {t.id for t in bq.tasks(TaskState.QUEUED, limit=2000)}
    assert [t.id for t in bq.tasks(TaskState.EXPIRED)] == ["gone"]
    assert len(bq.tasks(limit=1500)) == 1201


def test_retry_is_claimed_once(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    create(bq, "f")
    bq.records.transition("f", TaskState.FAILED, error="ValueError: no")
    bq.results.redis.set(bq.results.key("f"), json.dumps(
        {"status": "FAILURE", "result": {}, "args": [{"x": 1}]}))
    submitted: list[dict[str, Any]] = []

    def checking(request: Any) -> Steps[Any]:  # the submit's steps, stood in for
        return request
        yield

    def submitting(plans: list[Any], *args: Any) -> Steps[Submitted]:
        submitted.append(plans[0].payload)
        return Submitted(ids=["new"], released=0, cancelled=[], offers=[])
        yield

    monkeypatch.setattr(bq, "checking", checking)
    monkeypatch.setattr(bq, "submitting", submitting)
    assert bq.retry("f").id == "new"
    with pytest.raises(ValidationError, match="retried already"):
        bq.retry("f")
    assert submitted == [{"x": 1}] and bq.info("f").retried_as == "new"


class _Hook(http.server.BaseHTTPRequestHandler):
    codes: ClassVar[list[int]] = []
    seen: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(1)
        self.send_response(type(self).codes.pop(0) if type(self).codes else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("codes", "posts", "failed"), [
    ([500, 200], 2, 0),        # a server error is retried
    ([400], 1, 1),             # a refusal is not
    ([500, 500, 500], 3, 1),   # given up after the retries, without a last sleep
])
def test_webhook_retries_server_errors_only(
    codes: list[int], posts: int, failed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Hook.codes, _Hook.seen = list(codes), []
    slept: list[float] = []
    # the backoff the sink asks for, not a clock: this test is not timed
    monkeypatch.setattr(webhooks, "time", SimpleNamespace(**{**vars(time), "sleep": slept.append}))
    server = http.server.HTTPServer(("127.0.0.1", free_port()), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = WebhookSink(f"http://127.0.0.1:{server.server_port}/", retries=2, backoff_s=0.2)
        sink(Event(stream_id="1-0", kind="task", id="t", state="FAILED", at=time.time()))
        assert len(_Hook.seen) == posts and sink.failed == failed
        # exponential, and only between attempts: none after the last
        assert slept == [0.2 * 2**attempt for attempt in range(posts - 1)]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("facade", ["sync", "async"])
def test_a_retry_whose_submit_fails_is_not_retried_after_all(
    bq: BOQueue, server: Any, monkeypatch: pytest.MonkeyPatch, facade: str
) -> None:
    """An error executing a step is raised inside the steps (bo_queue.core.steps.drive,
    and AsyncBOQueue._run alike): the retry puts the task back in the failed registry."""
    create(bq, "f")
    bq.records.transition("f", TaskState.FAILED, error="ValueError: no")
    bq.results.redis.set(bq.results.key("f"), json.dumps(
        {"status": "FAILURE", "result": {}, "args": [{"x": 1}]}))

    def checking(request: Any) -> Steps[Any]:
        return request
        yield

    def lost(pipe: Any) -> None:
        raise redis.ConnectionError("lost")

    def submitting(plans: list[Any], *args: Any) -> Steps[Submitted]:
        yield Pipe.ATOMIC, lost
        raise AssertionError("the write failed")

    monkeypatch.setattr(bq, "checking", checking)
    monkeypatch.setattr(bq, "submitting", submitting)
    with pytest.raises(BrokerUnavailableError, match="lost"):
        if facade == "sync":
            bq.retry("f")
        else:
            async def retry() -> None:
                aq = fake_aq(bq, server)
                try:
                    await aq.retry("f")
                finally:
                    await aq.close()

            asyncio.run(retry())
    assert bq.redis.zscore(bq.keys.failed, "f") is not None
    assert bq.info("f").retried_as is None
