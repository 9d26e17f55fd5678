"""The Lua behind pause/resume, a dependency added later and resume_queue, on fakeredis:
what the start script holds back and where, and the races it settles."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from bo_queue import Priority, TaskState
from bo_queue.core.keys import Keys
from bo_queue.core.message import Message
from bo_queue.core.records import RecordStore

KEYS = Keys("t")
MESSAGE = Message(handler="unit.echo", payload={"xs": []}, queue="default", priority=6)


@pytest.fixture
def store(fake: fakeredis.FakeRedis) -> RecordStore:
    return RecordStore(fake, KEYS, ttl_s=100)


def make(store: RecordStore, task_id: str, state: TaskState = TaskState.QUEUED,
         queue: str = "default") -> None:
    with store.redis.pipeline(transaction=False) as pipe:
        store.create(pipe, {"id": task_id, "handler": "unit.echo", "queue": queue,
                            "priority": Priority.NORMAL, "state": state,
                            "created_at": time.time()})
        pipe.execute()


def start(store: RecordStore, task_id: str, held: Message | None = None,
          queue: str = "default") -> str:
    return store.start(task_id, "w1", "unit.echo", queue, Priority.NORMAL, held=held)[0]


def test_a_paused_task_is_held_only_when_its_message_is_given(store: RecordStore) -> None:
    make(store, "a")
    assert store.pause("a") is TaskState.QUEUED
    assert start(store, "a") == "hold"
    assert not store.redis.hexists(KEYS.paused, "a")
    assert start(store, "a", MESSAGE) == "held"
    assert Message.decode(store.redis.hget(KEYS.paused, "a") or "") == MESSAGE
    assert store.state("a") is TaskState.PAUSED and store.redis.ttl(KEYS.task("a")) == -1
    assert store.resume("a") == (TaskState.PAUSED, True, TaskState.QUEUED)  # sent now
    assert store.state("a") is TaskState.QUEUED
    assert store.redis.hget(KEYS.delayed_specs, "a") == MESSAGE.encode()
    assert not store.redis.hexists(KEYS.paused, "a") and store.redis.ttl(KEYS.task("a")) > 0
    assert start(store, "a") == "run"


def test_resumed_between_the_two_calls_it_runs(store: RecordStore) -> None:
    make(store, "a")
    store.pause("a")
    assert start(store, "a") == "hold"
    assert store.resume("a") == (TaskState.PAUSED, False, TaskState.QUEUED)  # none held
    assert start(store, "a", MESSAGE) == "run"
    assert not store.redis.hexists(KEYS.paused, "a")


def test_pause_and_resume_refuse_other_states(store: RecordStore) -> None:
    make(store, "r")
    start(store, "r")
    assert store.pause("r") is TaskState.RUNNING
    assert store.state("r") is TaskState.RUNNING
    assert store.resume("r") == (TaskState.RUNNING, False, TaskState.RUNNING)
    assert store.pause("nobody") is None and store.resume("nobody") is None


def test_a_paused_dependent_is_settled_and_stays_paused(store: RecordStore) -> None:
    make(store, "dep")
    make(store, "late", TaskState.PENDING)
    with store.redis.pipeline(transaction=False) as pipe:
        store.wait_for(pipe, "late", ["dep"], MESSAGE)
        pipe.execute()
    store.pause("late")
    start(store, "dep")
    store.transition("dep", TaskState.SUCCEEDED)
    # released (its message goes to the held schedule), but still PAUSED until resumed
    assert store.state("late") is TaskState.PAUSED
    assert store.redis.hexists(KEYS.delayed_specs, "late")
    assert start(store, "late", MESSAGE) == "held"
    assert store.resume("late") == (TaskState.PAUSED, True, TaskState.QUEUED)
    assert store.state("late") is TaskState.QUEUED


def test_a_failed_dependency_cancels_a_paused_dependent_and_drops_its_message(
    store: RecordStore,
) -> None:
    make(store, "dep")
    make(store, "late")
    assert store.add_dependencies("late", ["dep"]) == ["added", "1"]
    store.pause("late")
    start(store, "late", MESSAGE)
    assert store.redis.hexists(KEYS.paused, "late")
    store.cancel("dep", "no")
    assert store.state("late") is TaskState.CANCELLED
    assert not store.redis.hexists(KEYS.paused, "late")


def test_a_dependency_added_to_a_queued_task_parks_it_at_start(store: RecordStore) -> None:
    make(store, "dep")
    make(store, "late")
    assert store.add_dependencies("late", ["dep"]) == ["added", "1"]
    assert store.state("late") is TaskState.PENDING
    assert json.loads(store.redis.hget(KEYS.task("late"), "depends_on") or "") == ["dep"]
    assert start(store, "late") == "hold"
    assert start(store, "late", MESSAGE) == "held"
    assert store.redis.hexists(KEYS.parked, "late")
    start(store, "dep")
    store.transition("dep", TaskState.SUCCEEDED)
    assert store.state("late") is TaskState.QUEUED  # released: due now
    assert store.redis.hget(KEYS.delayed_specs, "late") == MESSAGE.encode()


def test_add_dependency_checks_everything_before_writing(store: RecordStore) -> None:
    make(store, "late")
    make(store, "ok")
    make(store, "gone", TaskState.CANCELLED)
    assert store.add_dependencies("late", ["ok", "nobody"]) == ["unknown", "nobody"]
    assert store.add_dependencies("late", ["ok", "gone"]) == ["failed", "gone", "CANCELLED"]
    assert store.state("late") is TaskState.QUEUED
    assert not store.redis.exists(KEYS.waiting("late"), KEYS.dependents("ok"))
    assert store.add_dependencies("nobody", ["ok"]) == ["gone"]
    start(store, "ok")
    assert store.add_dependencies("ok", ["late"]) == ["started", "RUNNING"]


def test_a_paused_queue_holds_its_capability_queues_too(store: RecordStore) -> None:
    make(store, "a", queue="default.gpu")
    make(store, "b", queue="default.gpu")
    make(store, "c", queue="default.gpu")
    store.redis.sadd(KEYS.paused_queues, "default")
    for task_id in "abc":
        assert start(store, task_id, queue="default.gpu") == "hold"
        assert start(store, task_id, MESSAGE, queue="default.gpu") == "held"
    assert store.state("a") is TaskState.QUEUED
    store.cancel("b", "no")
    store.redis.delete(KEYS.task("c"))  # as bq.delete would, once it ended
    assert store.resume_queue("default") == 1  # b ended, c is gone: only a is sent
    assert store.redis.hkeys(KEYS.delayed_specs) == ["a"]
    assert not store.redis.exists(KEYS.queue_held("default"), KEYS.paused_queues)
    assert start(store, "a", queue="default.gpu") == "run"


def test_update_writes_nothing_when_a_kept_message_changed_since_it_was_read(
    store: RecordStore,
) -> None:
    make(store, "a")
    store.redis.hset(KEYS.outbox, "a", MESSAGE.encode())
    moved = MESSAGE.model_copy(update={"priority": 0}).encode()
    stale = [(KEYS.outbox, "not what is there", moved)]
    assert store.update("a", {"name": "x"}, stale) == ["retry"]
    assert store.redis.hget(KEYS.outbox, "a") == MESSAGE.encode()
    assert store.redis.hget(KEYS.task("a"), "name") is None
    fresh = [(KEYS.outbox, MESSAGE.encode(), moved)]
    assert store.update("a", {"name": "x", "priority": Priority.CRITICAL}, fresh) == ["updated"]
    assert store.redis.hget(KEYS.outbox, "a") == moved
    info = store.get("a")
    assert info is not None and info.priority is Priority.CRITICAL and info.name == "x"
    start(store, "a")
    assert store.update("a", {"name": "y"}) == ["started", "RUNNING"]
