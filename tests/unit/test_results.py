"""Reading results: `outcome()` turns stored meta into a value or a TaskError, ResultWaiter
reads and waits on Celery's result keys, and TaskHandle puts them together."""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

import fakeredis
import pytest

from bo_queue import (
    BOQueue,
    Priority,
    Progress,
    ResultTimeoutError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskState,
    UnknownTaskError,
)
from bo_queue.core.results import ResultWaiter, outcome

# -- outcome() ---------------------------------------------------------------------------


def test_success_returns_the_result() -> None:
    assert outcome("t", {"status": "SUCCESS", "result": {"ok": [1, 2]}}) == {"ok": [1, 2]}
    assert outcome("t", {"status": "SUCCESS", "result": None}) is None


def test_failure_of_a_builtin_exception() -> None:
    meta = {
        "status": "FAILURE",
        "result": {"exc_type": "ValueError", "exc_module": "builtins", "exc_message": ["bad x"]},
        "traceback": "Traceback (most recent call last):\n...\nValueError: bad x\n",
    }
    with pytest.raises(TaskFailedError) as caught:
        outcome("t1", meta)
    exc = caught.value
    assert exc.task_id == "t1"
    assert exc.remote_type == "ValueError"
    assert exc.remote_message == "bad x"
    assert exc.remote_traceback == meta["traceback"]


def test_failure_of_a_library_exception_keeps_its_module() -> None:
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "InvalidResultError",
            "exc_module": "bo_queue.errors",
            "exc_message": ["handler 'x' returned", "a set"],
        },
        "traceback": None,
    }
    with pytest.raises(TaskFailedError) as caught:
        outcome("t2", meta)
    assert caught.value.remote_type == "bo_queue.errors.InvalidResultError"
    assert caught.value.remote_message == "handler 'x' returned a set"
    assert caught.value.remote_traceback is None


def test_failure_with_a_plain_string_message_or_result() -> None:
    with pytest.raises(TaskFailedError) as caught:
        outcome("t", {"status": "FAILURE", "result": {"exc_type": "Boom", "exc_message": "x"}})
    assert (caught.value.remote_type, caught.value.remote_message) == ("Boom", "x")
    with pytest.raises(TaskFailedError) as caught:
        outcome("t", {"status": "FAILURE", "result": "something odd"})
    assert (caught.value.remote_type, caught.value.remote_message) == (
        "Exception", "something odd"
    )


def test_revoked_as_expired() -> None:
    meta = {
        "status": "REVOKED",
        "result": {
            "exc_type": "TaskRevokedError",
            "exc_module": "celery.exceptions",
            "exc_message": ["expired"],
        },
    }
    with pytest.raises(TaskExpiredError) as caught:
        outcome("t3", meta)
    assert caught.value.task_id == "t3"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (["terminated"], "terminated"),
        (["tag 'x' cancelled"], "tag 'x' cancelled"),
        ([], "cancelled"),
    ],
)
def test_revoked_for_any_other_reason_is_cancelled(message: list[str], reason: str) -> None:
    meta = {
        "status": "REVOKED",
        "result": {"exc_type": "TaskRevokedError", "exc_module": "celery.exceptions",
                   "exc_message": message},
    }
    with pytest.raises(TaskCancelledError) as caught:
        outcome("t4", meta)
    assert caught.value.reason == reason
    assert not isinstance(caught.value, TaskExpiredError)


# -- what Celery itself writes, read back through ResultWaiter --------------------------


def test_results_prefix_follows_celerys_key_scheme(bq: BOQueue) -> None:
    assert bq.results.prefix == "unit:results:celery-task-meta-"
    assert bq.results.key("abc") == bq.app.backend.get_key_for_task("abc").decode()


def test_outcome_of_what_celery_stores(bq: BOQueue) -> None:
    backend = bq.app.backend
    backend.mark_as_done("ok", {"answer": 42})
    try:
        raise KeyError("missing")
    except KeyError as exc:
        backend.mark_as_failure("failed", exc, traceback=traceback.format_exc())
    backend.mark_as_revoked("expired", "expired")
    backend.mark_as_revoked("stopped", "stopped by operator")

    metas = dict(zip(["ok", "failed", "expired", "stopped"],
                     bq.results.fetch_many(["ok", "failed", "expired", "stopped"]), strict=True))
    assert all(meta is not None for meta in metas.values())
    assert outcome("ok", metas["ok"]) == {"answer": 42}  # type: ignore[arg-type]
    with pytest.raises(TaskFailedError) as failed:
        outcome("failed", metas["failed"])  # type: ignore[arg-type]
    assert failed.value.remote_type == "KeyError"
    assert "missing" in failed.value.remote_message
    assert "KeyError" in (failed.value.remote_traceback or "")
    with pytest.raises(TaskExpiredError):
        outcome("expired", metas["expired"])  # type: ignore[arg-type]
    with pytest.raises(TaskCancelledError) as stopped:
        outcome("stopped", metas["stopped"])  # type: ignore[arg-type]
    assert stopped.value.reason == "stopped by operator"


def test_unfinished_celery_states_are_not_ready(bq: BOQueue) -> None:
    backend = bq.app.backend
    backend.mark_as_started("started", pid=1, hostname="w1")
    try:
        raise ConnectionError("flaky")
    except ConnectionError as exc:
        backend.mark_as_retry("retrying", exc, traceback=traceback.format_exc())
    assert bq.results.fetch("started") is None
    assert bq.results.fetch("retrying") is None
    assert bq.results.fetch_many(["started", "retrying", "missing"]) == [None, None, None]


# -- ResultWaiter on fakeredis ---------------------------------------------------------


@pytest.fixture
def waiter(fake: fakeredis.FakeRedis) -> ResultWaiter:
    return ResultWaiter(fake, "p:")


def store(fake: fakeredis.FakeRedis, task_id: str, status: str, result: Any = None) -> str:
    raw = json.dumps({"status": status, "result": result, "task_id": task_id})
    fake.set("p:" + task_id, raw)
    return raw


def test_fetch_missing_is_none(waiter: ResultWaiter) -> None:
    assert waiter.fetch("nope") is None
    assert waiter.fetch_many([]) == []


@pytest.mark.parametrize("status", ["PENDING", "STARTED", "RETRY", "RECEIVED"])
def test_fetch_not_ready_is_none(
    waiter: ResultWaiter, fake: fakeredis.FakeRedis, status: str
) -> None:
    store(fake, "a", status)
    assert waiter.fetch("a") is None


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE", "REVOKED"])
def test_fetch_ready_returns_meta(
    waiter: ResultWaiter, fake: fakeredis.FakeRedis, status: str
) -> None:
    store(fake, "a", status, {"v": 1})
    assert waiter.fetch("a") == {"status": status, "result": {"v": 1}, "task_id": "a"}


def test_fetch_many_keeps_order(waiter: ResultWaiter, fake: fakeredis.FakeRedis) -> None:
    store(fake, "a", "SUCCESS", 1)
    store(fake, "c", "STARTED")
    metas = waiter.fetch_many(["a", "b", "c"])
    assert metas[0] is not None and metas[0]["result"] == 1
    assert metas[1:] == [None, None]


def test_wait_on_a_missing_key_times_out(waiter: ResultWaiter) -> None:
    started = time.monotonic()
    assert waiter.wait("nope", timeout=0.2) is None
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 2.0


def test_wait_returns_a_stored_result_at_once(
    waiter: ResultWaiter, fake: fakeredis.FakeRedis
) -> None:
    store(fake, "a", "SUCCESS", "done")
    started = time.monotonic()
    meta = waiter.wait("a", timeout=5)
    assert meta is not None and meta["result"] == "done"
    assert time.monotonic() - started < 1.0


def test_wait_is_woken_by_the_published_result(
    waiter: ResultWaiter, fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The result arrives after wait() subscribed: only the pub/sub message can deliver it,
    # and the stored result is read once, when the subscription is confirmed.
    calls = 0

    def fetch(task_id: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        fake.publish("p:" + task_id, json.dumps({"status": "RETRY"}))  # ignored: not ready
        fake.publish("p:" + task_id, json.dumps({"status": "SUCCESS", "result": 7}))
        return None

    monkeypatch.setattr(waiter, "fetch", fetch)
    meta = waiter.wait("a", timeout=5)
    assert meta == {"status": "SUCCESS", "result": 7}
    assert calls == 1


def test_wait_reads_the_stored_result_once_subscribed(
    waiter: ResultWaiter, fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SUBSCRIBE returns before Redis processed it: a result stored and published before
    it took effect is never delivered by pub/sub. wait() reads the stored result once the
    subscription is confirmed, so such a result is found at that read."""
    subscribed_at_read: list[int] = []

    def fetch(task_id: str) -> dict[str, Any] | None:
        [(_, count)] = fake.pubsub_numsub("p:" + task_id)
        subscribed_at_read.append(int(count))
        return {"status": "SUCCESS", "result": 9}  # stored, never published

    monkeypatch.setattr(waiter, "fetch", fetch)
    assert waiter.wait("a", timeout=10) == {"status": "SUCCESS", "result": 9}
    assert subscribed_at_read == [1]


def test_a_reused_connection_skips_the_last_waits_confirmation(
    waiter: ResultWaiter, fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second wait on an idle connection first reads the first wait's unsubscribe
    confirmation: not its own channel, so it reads no stored result for it."""
    reads: list[str] = []

    def fetch(task_id: str) -> dict[str, Any] | None:
        reads.append(task_id)
        fake.publish("p:" + task_id, json.dumps({"status": "SUCCESS", "result": task_id}))
        return None

    monkeypatch.setattr(waiter, "fetch", fetch)
    assert waiter.wait("a", timeout=5) == {"status": "SUCCESS", "result": "a"}
    assert waiter.wait("b", timeout=5) == {"status": "SUCCESS", "result": "b"}
    assert reads == ["a", "b"]


# -- TaskHandle over fakeredis -----------------------------------------------------------


def _record(bq: BOQueue, task_id: str, state: TaskState, **extra: Any) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {
            "id": task_id, "handler": "unit.x", "queue": "default", "priority": Priority.NORMAL,
            "tags": (), "parent_id": None, "state": state, "created_at": time.time(), **extra,
        })
        pipe.execute()


def test_handle_get_returns_the_result(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.RUNNING)
    bq.app.backend.mark_as_done("a", [1, 2, 3])
    handle = bq.handle("a")
    assert handle.get(timeout=0) == [1, 2, 3]
    # The stored result wins over a record the worker has not updated yet.
    assert handle.state is TaskState.SUCCEEDED
    assert handle.ready()


def test_handle_get_times_out(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.QUEUED)
    handle = bq.handle("a")
    assert not handle.ready()
    with pytest.raises(ResultTimeoutError) as caught:
        handle.get(timeout=0.1)
    assert caught.value.task_id == "a"
    assert isinstance(caught.value, TimeoutError)


def test_handle_get_of_an_expired_record(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.QUEUED, expires_at=time.time() - 1)
    handle = bq.handle("a")
    assert handle.state is TaskState.EXPIRED
    with pytest.raises(TaskExpiredError):
        handle.get(timeout=5)  # raises at once: it will never run


def test_handle_get_of_a_cancelled_record(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.CANCELLED)
    with pytest.raises(TaskCancelledError):
        bq.handle("a").get(timeout=5)


def test_handle_get_of_a_failure(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.RUNNING)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError as exc:
        bq.app.backend.mark_as_failure("a", exc, traceback=traceback.format_exc())
    handle = bq.handle("a")
    with pytest.raises(TaskFailedError) as caught:
        handle.get(timeout=0)
    assert caught.value.remote_type == "ZeroDivisionError"
    assert caught.value.remote_message == "division by zero"
    info = handle.info()
    assert info.state is TaskState.FAILED
    assert info.error == "ZeroDivisionError: division by zero"


def test_handle_progress(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.RUNNING)
    handle = bq.handle("a")
    assert handle.progress == Progress(0.0, "")
    bq.records.set_progress("a", 0.5, "halfway")
    assert handle.progress == Progress(0.5, "halfway")


def test_handles_compare_by_id(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.QUEUED)
    assert bq.handle("a") == bq.handle("a")
    assert len({bq.handle("a"), bq.handle("a")}) == 1
    assert repr(bq.handle("a")) == "TaskHandle('a')"


def test_unknown_ids(bq: BOQueue) -> None:
    with pytest.raises(UnknownTaskError):
        bq.handle("ghost")
    with pytest.raises(UnknownTaskError):
        bq.info("ghost")
    with pytest.raises(UnknownTaskError):
        bq.cancel("ghost")


def test_cancel_of_a_running_task_reports_running(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.QUEUED)
    assert bq.records.start("a", "w", "unit.echo", "default", Priority.NORMAL)[0] == "run"
    assert bq.cancel("a") is TaskState.RUNNING  # it stops at its next ctx.cancelled check
    assert bq.records.is_cancelled("a")
    assert bq.info("a").state is TaskState.RUNNING


def test_cancel_of_a_finished_task_reports_its_end(bq: BOQueue) -> None:
    _record(bq, "a", TaskState.SUCCEEDED)
    assert bq.cancel("a") is TaskState.SUCCEEDED
    assert not bq.records.is_cancelled("a")


def test_then_as_the_first_result_call_does_not_deadlock() -> None:
    """`callbacks` builds `results` under the same lock: it must be re-entrant."""
    import threading

    from bo_queue import BOQueue

    bq = BOQueue(redis_url="redis://127.0.0.1:1/0", namespace="unitlock")
    finished = threading.Event()

    def first_call() -> None:
        bq.callbacks  # noqa: B018  (the property builds the dispatcher)
        finished.set()

    threading.Thread(target=first_call, daemon=True).start()
    assert finished.wait(5), "BOQueue.callbacks deadlocked on its own lock"
    bq.close()


def test_waits_from_many_threads_keep_few_connections(waiter: ResultWaiter) -> None:
    """Idle pub/sub connections are pooled, not kept per thread that ever waited."""
    import threading

    def wait_once() -> None:
        waiter.wait("nobody", timeout=0.05)

    threads = [threading.Thread(target=wait_once) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert waiter._idle.qsize() <= 8
