"""Held submissions: long delays wait in a Redis sorted set, not in a worker's memory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

import bo_queue
from bo_queue import BOQueue, TaskCancelledError, TaskState
from bo_queue.core.delays import DelayedSubmissions
from bo_queue.core.keys import Keys
from bo_queue.core.message import Message

from .fakes import fake_bq

Sent = list[tuple[str, Message]]


def message(**payload: Any) -> Message:
    return Message(handler="h", payload=payload, queue="default")


@pytest.fixture
def delays(fake: fakeredis.FakeRedis) -> DelayedSubmissions:
    return DelayedSubmissions(fake, Keys("t"))


def hold(delays: DelayedSubmissions, task_id: str, due_in_s: float, **spec: Any) -> None:
    with delays.redis.pipeline(transaction=False) as pipe:
        delays.hold(pipe, task_id, time.time() + due_in_s, message(**spec))
        pipe.execute()


def recorder() -> tuple[Sent, Callable[[str, Message], None]]:
    sent: Sent = []
    return sent, lambda task_id, spec: sent.append((task_id, spec))


def test_hold_writes_the_set_and_the_spec(
    delays: DelayedSubmissions, fake: fakeredis.FakeRedis
) -> None:
    due = time.time() + 60
    with fake.pipeline(transaction=False) as pipe:
        delays.hold(pipe, "a", due, message(x=1))
        assert delays.pending() == 0  # nothing is written until the pipeline runs
        pipe.execute()
    assert delays.pending() == 1
    assert fake.zscore(delays.zset, "a") == pytest.approx(due)
    assert Message.decode(fake.hget(delays.specs, "a")) == message(x=1)
    assert delays.zset == "t:delayed"


def test_release_due_sends_only_what_is_due(delays: DelayedSubmissions) -> None:
    hold(delays, "past", -5, n=1)
    hold(delays, "just-now", -0.001, n=2)
    hold(delays, "future", 3600, n=3)
    sent, send = recorder()
    assert delays.release_due(send) == 2
    assert sorted(sent) == [
        ("just-now", message(n=2)), ("past", message(n=1))
    ]
    assert delays.pending() == 1  # the future one waits
    sent.clear()
    assert delays.release_due(send) == 0
    assert sent == []


def test_release_due_respects_the_limit(delays: DelayedSubmissions) -> None:
    for i in range(5):
        hold(delays, f"t{i}", -10 + i)
    sent, send = recorder()
    assert delays.release_due(send, limit=2) == 2
    assert [task_id for task_id, _ in sent] == ["t0", "t1"]  # the oldest first
    assert delays.pending() == 3


def test_failed_send_keeps_the_item_until_its_lease_runs_out(
    delays: DelayedSubmissions, fake: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    hold(delays, "a", -1, n=1)

    def broken(task_id: str, spec: Message) -> None:
        raise ConnectionError("broker down")

    assert delays.release_due(broken, lease_s=3600) == 0
    assert delays.pending() == 1  # not lost
    assert fake.hget(delays.specs, "a") is not None
    assert "could not send held task a" in caplog.text
    # Leased for an hour: a second mover does not send it again at once.
    sent, send = recorder()
    assert delays.release_due(send, lease_s=3600) == 0
    assert sent == []
    assert fake.zscore(delays.zset, "a") > time.time() + 3000


def test_failed_send_is_reclaimed_once_the_lease_is_over(delays: DelayedSubmissions) -> None:
    hold(delays, "a", -1, n=1)

    def broken(task_id: str, spec: Message) -> None:
        raise ConnectionError("broker down")

    assert delays.release_due(broken, lease_s=0) == 0
    assert delays.pending() == 1
    sent, send = recorder()
    assert delays.release_due(send, lease_s=0) == 1
    assert sent == [("a", message(n=1))]
    assert delays.pending() == 0


def test_one_failed_send_does_not_block_the_others(delays: DelayedSubmissions) -> None:
    hold(delays, "bad", -2)
    hold(delays, "good", -1)
    sent: list[str] = []

    def picky(task_id: str, spec: Message) -> None:
        if task_id == "bad":
            raise RuntimeError("no")
        sent.append(task_id)

    assert delays.release_due(picky) == 1
    assert sent == ["good"]
    assert delays.pending() == 1


def test_drop_removes_it(delays: DelayedSubmissions, fake: fakeredis.FakeRedis) -> None:
    hold(delays, "a", -1)
    hold(delays, "b", -1)
    delays.drop("a")
    assert delays.pending() == 1
    assert fake.hget(delays.specs, "a") is None
    sent, send = recorder()
    assert delays.release_due(send) == 1
    assert [task_id for task_id, _ in sent] == ["b"]
    delays.drop("never-held")  # harmless


def test_an_id_without_a_spec_is_cleaned_up(
    delays: DelayedSubmissions, fake: fakeredis.FakeRedis
) -> None:
    fake.zadd(delays.zset, {"orphan": time.time() - 1})
    sent, send = recorder()
    assert delays.release_due(send) == 0
    assert sent == []
    assert delays.pending() == 0


# -- held submissions through BOQueue (no broker: a held task is only written to Redis) --


@bo_queue.handler("unit.delays.echo", queue="bo")
def _echo(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return payload


def _no_broker(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a held submission must not reach the broker")

    monkeypatch.setattr(bq, "send", refuse)


def test_long_countdown_is_held_in_redis(
    bq: BOQueue, fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_broker(bq, monkeypatch)
    before = time.time()
    handle = bq.submit(
        "unit.delays.echo", {"x": 1}, countdown=1200, priority="high", tags=("later",)
    )
    info = bq.info(handle.id)
    assert info.state is TaskState.PENDING
    assert info.tags == ("later",)
    assert info.due_at is not None
    assert info.due_at.timestamp() == pytest.approx(before + 1200, abs=5)
    assert bq.delays.pending() == 1
    assert fake.zscore(bq.keys.delayed, handle.id) == pytest.approx(before + 1200, abs=5)
    sent, send = recorder()
    assert bq.delays.release_due(send) == 0  # not due yet
    assert sent == []
    spec = json.loads(fake.hget(bq.delays.specs, handle.id))
    assert spec["handler"] == "unit.delays.echo"
    assert spec["payload"] == {"x": 1}
    assert spec["queue"] == "bo"
    assert spec["priority"] == bo_queue.Priority.HIGH.broker_priority
    assert spec["retries"] == 0


def test_cancelling_a_held_task_drops_it_and_wakes_get(
    bq: BOQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_broker(bq, monkeypatch)
    handle = bq.submit("unit.delays.echo", {}, countdown=1200)
    assert bq.cancel(handle.id, reason="not tonight") is TaskState.CANCELLED
    assert bq.delays.pending() == 0
    assert handle.state is TaskState.CANCELLED
    assert handle.ready()
    with pytest.raises(TaskCancelledError) as caught:
        handle.get(timeout=0)
    assert caught.value.task_id == handle.id
    assert caught.value.reason == "not tonight"


def test_cancel_tag_reaches_held_tasks(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_broker(bq, monkeypatch)
    tagged = [bq.submit("unit.delays.echo", {}, countdown=1200, tags=("batch",)) for _ in range(2)]
    other = bq.submit("unit.delays.echo", {}, countdown=1200, tags=("keep",))
    assert sorted(bq.cancel_tag("batch")) == sorted(h.id for h in tagged)
    assert bq.cancel_tag("batch") == []  # already cancelled: nothing more to do
    assert bq.delays.pending() == 1
    assert other.state is TaskState.PENDING


def test_record_of_a_held_task_outlives_its_delay(
    server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Records live result_expires_s; a task held for longer than that must keep its
    # record (and tag link) until it is due, or it can no longer be seen or cancelled
    # while it still waits to run.
    bq = fake_bq(server, result_expires_s=60)
    try:
        fake = bq.redis
        _no_broker(bq, monkeypatch)
        handle = bq.submit("unit.delays.echo", {}, countdown=600, tags=("late",))
        record_ttl = fake.ttl(bq.keys.task(handle.id))
        tag_ttl = fake.ttl(bq.keys.tag("late"))
        assert record_ttl >= 600, f"record expires in {record_ttl} s, task is due in 600 s"
        assert tag_ttl >= 600, f"tag link expires in {tag_ttl} s, task is due in 600 s"
    finally:
        bq.close()
