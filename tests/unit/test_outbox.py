"""bo_queue.core.outbox on fakeredis: which messages count as lost, and when they are sent
again (the whole path, with real workers and a real Redis, is in tests/reliability)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import fakeredis
import pytest

from bo_queue.core.keys import Keys
from bo_queue.core.message import Message
from bo_queue.core.outbox import Outbox

KEYS = Keys("ns")


def envelope(task_id: str) -> str:
    return json.dumps({"body": "", "headers": {"id": task_id}, "properties": {}})


def message(task_id: str) -> Message:
    return Message(handler="h", payload={"id": task_id}, queue="default")


@pytest.fixture
def outbox(fake: fakeredis.FakeRedis) -> Outbox:
    return Outbox(fake, KEYS)


def task(fake: fakeredis.FakeRedis, outbox: Outbox, task_id: str, state: str = "QUEUED") -> None:
    fake.hset(KEYS.task(task_id), "state", state)
    outbox.keep(fake, task_id, message(task_id))


def reconcile(outbox: Outbox, during_settle: Any = None) -> list[tuple[str, Any]]:
    sent: list[tuple[str, Any]] = []
    with mock.patch("bo_queue.core.outbox.time.sleep", side_effect=during_settle):
        outbox.reconcile(lambda task_id, message: sent.append((task_id, message)),
                         lambda: ["default"])
    return sent


def test_nothing_is_sent_without_a_suspicion(fake: fakeredis.FakeRedis, outbox: Outbox) -> None:
    task(fake, outbox, "lost")
    assert reconcile(outbox) == []


def test_only_queued_tasks_whose_message_is_nowhere_are_sent_again(
    fake: fakeredis.FakeRedis, outbox: Outbox
) -> None:
    prefix = KEYS.broker_prefix
    for task_id in ("lost", "queued", "prefetched", "held", "started"):
        task(fake, outbox, task_id, "RUNNING" if task_id == "started" else "QUEUED")
    fake.lpush(prefix + "default:6", envelope("queued"))
    fake.hset(prefix + "unacked", "tag1", json.dumps([json.loads(envelope("prefetched")),
                                                       "default", "default"]))
    fake.hset(KEYS.delayed_specs, "held", "{}")
    outbox.suspect("a worker died")

    assert reconcile(outbox) == [("lost", message("lost"))]
    assert not fake.hexists(KEYS.outbox, "started")  # its entry goes: the task started
    assert fake.hexists(KEYS.outbox, "lost")  # until the re-sent message starts it
    assert not fake.exists(outbox.suspicion_key)
    assert reconcile(outbox) == []  # looked once per suspicion


def test_a_message_a_live_worker_records_meanwhile_is_not_sent(
    fake: fakeredis.FakeRedis, outbox: Outbox
) -> None:
    task(fake, outbox, "in-flight")  # popped by a worker, not yet recorded as unacked
    outbox.suspect("Redis restarted")

    def worker_records_it(_: float) -> None:
        fake.hset(KEYS.broker_prefix + "unacked", "tag",
                  json.dumps([json.loads(envelope("in-flight")), "", "default"]))

    assert reconcile(outbox, worker_records_it) == []


def test_a_suspicion_raised_while_reconciling_stays_for_the_next_look(
    fake: fakeredis.FakeRedis, outbox: Outbox
) -> None:
    task(fake, outbox, "lost")
    outbox.suspect("Redis restarted")
    sent = reconcile(outbox, lambda _: outbox.suspect("a worker died"))
    assert [task_id for task_id, _ in sent] == ["lost"]
    assert fake.exists(outbox.suspicion_key)


def test_one_worker_at_a_time(fake: fakeredis.FakeRedis, outbox: Outbox) -> None:
    task(fake, outbox, "lost")
    outbox.suspect("Redis restarted")
    fake.set(f"{KEYS.outbox}:reconciling", 1)  # another worker is looking
    assert reconcile(outbox) == []
    assert fake.exists(outbox.suspicion_key)


def test_restarted_reports_a_new_run_id_once(fake: fakeredis.FakeRedis) -> None:
    first, second = Outbox(fake, KEYS), Outbox(fake, KEYS)
    with mock.patch.object(fake, "info", return_value={"run_id": "a"}):
        assert first.restarted() is None  # the first look only notes it
        assert second.restarted() is None
    with mock.patch.object(fake, "info", return_value={"run_id": "b"}):
        assert first.restarted() == "b"
        assert second.restarted() is None  # one worker raises the suspicion
