"""The task message a submit writes itself (Message.envelope, pushed in the submit's own
MULTI) is the one Celery's send_task and kombu's Redis transport write, list and all, on
the kombu version pyproject pins; and a real worker runs it, every header honoured."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bo_queue import BOQueue, Priority, RetryPolicy, TaskState
from bo_queue.core.message import Message
from bo_queue.testing import wait_until
from bo_queue.validation import utc
from tests.conftest import Cluster, new_namespace

# What differs between two messages of the same task by nature: kombu's delivery tag is
# a fresh uuid, and two properties kombu's Redis transport ignores (its publish copies
# send_task's unknown options into properties; "expiration" is AMQP's message TTL).
VOLATILE = ("delivery_tag", "kwargsrepr", "expiration")

MESSAGES = {
    "plain": Message(handler="t.echo", payload={}, queue="default"),
    "everything": Message(
        handler="t.echo", payload={"x": [1, "é", {"deep": {"er": {"still": 1}}}]},
        queue="default", priority=Priority.HIGH.broker_priority,
        expires_at=time.time() + 3600, retries=2, parent_id="p-1",
        resources={"cpu": 1.0, "memory_mb": 64.0, "gpu": 0},
        study={"study_id": "s-1", "trial_index": 3},
        retry={"max_retries": 1, "backoff": 0.0, "backoff_max": 0.0, "jitter": False,
               "on": ["builtins.KeyError"]},
        time_limit=2.5, kwargsrepr="{'name': 'n'}",
    ),
    "eta": Message(handler="t.echo", payload={"big": "x" * 3000}, queue="evaluate",
                   priority=9, due_at=time.time() + 600),
    "due": Message(handler="t.echo", payload={}, queue="default", priority=0,
                   due_at=time.time() - 1),  # due already: no eta
}


def celerys(bq: BOQueue, task_id: str, message: Message) -> None:
    """How bo_queue sent a message before (kombu's producer, through send_task)."""
    due_at, expires_at = message.due_at, message.expires_at
    bq.app.send_task(
        message.handler, args=[message.payload], task_id=task_id, queue=message.queue,
        priority=message.priority,
        eta=utc(due_at) if due_at and due_at > time.time() else None,
        expires=utc(expires_at) if expires_at else None,
        retries=message.retries, parent_id=message.parent_id, headers=message.headers(),
        kwargsrepr=message.kwargsrepr, **message.time_limits(),
    )


def comparable(raw: str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(raw)
    for name in VOLATILE:
        envelope["properties"].pop(name, None)
    return envelope


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_the_envelope_is_what_celery_writes(redis_url: str, name: str) -> None:
    message = MESSAGES[name]
    with BOQueue(redis_url=redis_url, namespace=new_namespace(),
                 queues="default,evaluate") as bq:
        key = message.broker_list(bq.keys.broker_prefix)
        celerys(bq, "task-1", message)
        [theirs] = bq.redis.lrange(key, 0, -1)  # the list kombu chose: the same one
        bq.redis.delete(key)
        bq.send("task-1", message)
        [ours] = bq.redis.lrange(key, 0, -1)
        assert comparable(ours) == comparable(theirs)
        assert bq.redis.hexists(bq.keys.outbox, "task-1")  # kept in the same MULTI


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    c = Cluster(redis_url, new_namespace(), {"queues": "default,evaluate"},
                queues=("default", "evaluate"))
    c.start_workers({"concurrency": 1})
    yield c
    c.close()


def test_a_worker_runs_what_a_submit_writes(cluster: Cluster) -> None:
    bq = cluster.producer()
    handle = bq.submit("t.echo", {"x": "é"}, priority="high", expires=600, time_limit=5,
                       retry=RetryPolicy(max_retries=1), name="n", metadata={"m": 1},
                       countdown=0.3, resources={"cpu": 0.5})
    assert handle.get(timeout=30) == {"x": "é"}
    wait_until(lambda: bq.info(handle.id).state is TaskState.SUCCEEDED, timeout=10)
    info = bq.info(handle.id)
    assert info.priority is Priority.HIGH and info.time_limit == 5
    assert info.started_at is not None and info.due_at is not None
    assert info.started_at >= info.due_at  # the eta held it back
    assert not bq.redis.hexists(bq.keys.outbox, handle.id)  # taken out once it started
    many = bq.submit_many({"handler": "t.echo", "payload": {"i": i}, "queue": "evaluate"}
                          for i in range(20))
    assert [h.get(timeout=30) for h in many] == [{"i": i} for i in range(20)]
