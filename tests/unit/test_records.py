"""Task records on fakeredis: creation, the start/cancel race scripts, and transitions."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest

from bo_queue import Priority, TaskInfo, TaskState
from bo_queue.core.keys import Keys
from bo_queue.core.records import RecordStore

TTL = 100

# what a worker passes from the message: handler, queue, priority
MSG = ("unit.echo", "default", Priority.NORMAL)


@pytest.fixture
def store(fake: fakeredis.FakeRedis) -> RecordStore:
    return RecordStore(fake, Keys("t"), ttl_s=TTL)


def make(store: RecordStore, task_id: str, **overrides: Any) -> dict[str, Any]:
    """Write a record the way Core.submit_plans does, through a pipeline."""
    fields: dict[str, Any] = {
        "id": task_id,
        "handler": "reports.build",
        "queue": "default",
        "priority": Priority.HIGH,
        "tags": ("nightly", "eu"),
        "parent_id": None,
        "state": TaskState.QUEUED,
        "created_at": time.time(),
        "due_at": None,
        "expires_at": None,
    }
    fields.update(overrides)
    with store.redis.pipeline(transaction=False) as pipe:
        store.create(pipe, fields)
        pipe.execute()
    return fields


def test_created_record_reads_back(store: RecordStore) -> None:
    before = time.time()
    make(store, "parent", tags=())
    make(store, "child", parent_id="parent", due_at=before + 30, expires_at=before + 90)
    info = store.get("child")
    assert isinstance(info, TaskInfo)
    assert info.id == "child"
    assert info.handler == "reports.build"
    assert info.queue == "default"
    assert info.priority is Priority.HIGH
    assert info.state is TaskState.QUEUED
    assert info.tags == ("nightly", "eu")
    assert info.parent_id == "parent"
    assert info.children == ()
    assert info.created_at.timestamp() == pytest.approx(before, abs=5)
    assert info.due_at is not None and info.due_at.timestamp() == pytest.approx(before + 30)
    assert info.expires_at is not None
    assert info.expires_at.timestamp() == pytest.approx(before + 90)
    assert (info.attempts, info.retries, info.progress, info.worker) == (0, 0, 0.0, None)
    parent = store.get("parent")
    assert parent is not None
    assert parent.children == ("child",)
    assert parent.tags == ()
    assert parent.parent_id is None


def test_children_are_sorted(store: RecordStore) -> None:
    make(store, "p")
    for child in ("c3", "c1", "c2"):
        make(store, child, parent_id="p")
    info = store.get("p")
    assert info is not None and info.children == ("c1", "c2", "c3")


def test_ttl_on_record_tags_and_children(store: RecordStore, fake: fakeredis.FakeRedis) -> None:
    make(store, "a", parent_id="p")
    keys = store.keys
    for key in (keys.task("a"), keys.tag("nightly"), keys.tag("eu"), keys.children("p")):
        assert 0 < fake.ttl(key) <= TTL, key
    assert store.tagged("nightly") == {"a"}
    assert store.exists("a")
    assert not store.exists("b")


def test_get_unknown_is_none(store: RecordStore) -> None:
    assert store.get("nope") is None


def test_start_runs_and_counts_redeliveries(store: RecordStore) -> None:
    make(store, "a")
    assert store.start("a", "worker-1", *MSG) == ("run", 1)
    info = store.get("a")
    assert info is not None
    assert info.state is TaskState.RUNNING
    assert info.worker == "worker-1"
    assert info.started_at is not None
    assert info.attempts == 1
    # The message comes back (lost worker, redelivery): the same task runs again.
    assert store.start("a", "worker-2", *MSG) == ("run", 2)
    info = store.get("a")
    assert info is not None and info.worker == "worker-2" and info.attempts == 2


def test_runs_lost_with_their_worker_are_counted_up_to_a_limit(store: RecordStore) -> None:
    make(store, "a")
    assert store.start("a", "w", *MSG, lost_allowed=2) == ("run", 1)
    # Each start that finds the record still RUNNING follows a run that died.
    assert store.start("a", "w", *MSG, lost_allowed=2) == ("run", 2)
    assert store.start("a", "w", *MSG, lost_allowed=2) == ("run", 3)
    assert store.start("a", "w", *MSG, lost_allowed=2) == ("lost", 3)  # a poison task
    info = store.get("a")
    assert info is not None and info.lost == 3 and info.attempts == 3
    assert info.state is TaskState.RUNNING  # the worker fails it (Celery stores the error)


def test_the_same_start_sent_twice_is_not_a_lost_run(store: RecordStore) -> None:
    # a client that retried the script because its reply was lost (a network blip)
    make(store, "a")
    assert store.start("a", "w", *MSG, run="r1") == ("run", 1)
    assert store.start("a", "w", *MSG, run="r1") == ("run", 1)
    info = store.get("a")
    assert info is not None and info.lost == 0 and info.attempts == 1
    assert store.start("a", "w2", *MSG, run="r2") == ("run", 2)  # another delivery: lost
    info = store.get("a")
    assert info is not None and info.lost == 1


def test_a_retry_is_not_a_lost_run(store: RecordStore) -> None:
    make(store, "a")
    store.start("a", "w", *MSG, lost_allowed=0)
    store.transition("a", TaskState.RETRYING)
    assert store.start("a", "w", *MSG, lost_allowed=0) == ("run", 2)
    info = store.get("a")
    assert info is not None and info.lost == 0


def test_start_clears_next_attempt_and_refreshes_ttl(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    make(store, "a")
    assert store.transition("a", TaskState.RETRYING, next_attempt_at=time.time() + 5, retries=1)
    fake.expire(store.keys.task("a"), 5)
    assert store.start("a", "w", *MSG)[0] == "run"
    info = store.get("a")
    assert info is not None and info.next_attempt_at is None and info.retries == 1
    assert fake.ttl(store.keys.task("a")) > 5


def test_cancel_queued(store: RecordStore) -> None:
    make(store, "a")
    assert store.cancel("a", "no longer needed") is TaskState.QUEUED
    info = store.get("a")
    assert info is not None
    assert info.state is TaskState.CANCELLED
    assert info.error == "no longer needed"
    assert info.finished_at is not None
    assert store.is_cancelled("a")
    # A worker that picks the message up afterwards must not run it.
    assert store.start("a", "w", *MSG) == ("cancelled", 0)
    info = store.get("a")
    assert info is not None and info.state is TaskState.CANCELLED and info.attempts == 0


def test_cancel_pending_held_task(store: RecordStore) -> None:
    make(store, "a", state=TaskState.PENDING)
    assert store.cancel("a", "stop") is TaskState.PENDING
    info = store.get("a")
    assert info is not None and info.state is TaskState.CANCELLED


def test_cancel_running_only_sets_the_flag(store: RecordStore, fake: fakeredis.FakeRedis) -> None:
    make(store, "a")
    store.start("a", "w", *MSG)
    assert store.cancel("a", "stop please") is TaskState.RUNNING
    info = store.get("a")
    assert info is not None
    assert info.state is TaskState.RUNNING
    assert info.error is None
    assert store.is_cancelled("a")
    assert fake.get(store.keys.cancelled("a")) == "stop please"
    assert 0 < fake.ttl(store.keys.cancelled("a")) <= TTL


def test_cancel_unknown_returns_none_and_writes_nothing(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    assert store.cancel("ghost", "x") is None
    assert fake.keys("*") == []


@pytest.mark.parametrize(
    "final", [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED]
)
def test_cancel_terminal_writes_nothing(
    store: RecordStore, fake: fakeredis.FakeRedis, final: TaskState
) -> None:
    make(store, "a", state=final)
    before = fake.hgetall(store.keys.task("a"))
    assert store.cancel("a", "too late") is final
    assert fake.hgetall(store.keys.task("a")) == before
    assert not store.is_cancelled("a")


def test_transition_moves_a_live_record(store: RecordStore, fake: fakeredis.FakeRedis) -> None:
    make(store, "a")
    store.start("a", "w", *MSG)
    fake.expire(store.keys.task("a"), 5)
    assert store.transition("a", TaskState.SUCCEEDED, finished_at=time.time(), progress=1.0)
    info = store.get("a")
    assert info is not None
    assert info.state is TaskState.SUCCEEDED and info.progress == 1.0
    assert info.finished_at is not None
    assert fake.ttl(store.keys.task("a")) > 5  # the TTL is refreshed


@pytest.mark.parametrize(
    "final", [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED]
)
@pytest.mark.parametrize("target", [TaskState.RUNNING, TaskState.FAILED, TaskState.RETRYING])
def test_transition_never_moves_a_terminal_record(
    store: RecordStore, fake: fakeredis.FakeRedis, final: TaskState, target: TaskState
) -> None:
    make(store, "a", state=final)
    before = fake.hgetall(store.keys.task("a"))
    assert store.transition("a", target, error="late writer") is False
    assert fake.hgetall(store.keys.task("a")) == before


@pytest.mark.parametrize("final", [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.EXPIRED])
def test_start_on_an_ended_record_is_done(store: RecordStore, final: TaskState) -> None:
    make(store, "a", state=final)
    assert store.start("a", "w", *MSG) == ("done", 0)
    info = store.get("a")
    assert info is not None and info.state is final and info.attempts == 0


def test_start_on_a_succeeded_record_that_is_also_flagged_stays_succeeded(
    store: RecordStore,
) -> None:
    make(store, "a")
    store.start("a", "w", *MSG)
    store.cancel("a", "stop")  # flag set while running
    assert store.transition("a", TaskState.SUCCEEDED)  # it finished anyway
    assert store.start("a", "w2", *MSG) == ("cancelled", 0)  # a redelivery does not run it
    info = store.get("a")
    assert info is not None and info.state is TaskState.SUCCEEDED


@pytest.mark.parametrize("waiting", [TaskState.QUEUED, TaskState.PENDING])
def test_waiting_record_past_its_expiry_reads_as_expired(
    store: RecordStore, waiting: TaskState
) -> None:
    make(store, "old", state=waiting, expires_at=time.time() - 1)
    make(store, "fresh", state=waiting, expires_at=time.time() + 60)
    old, fresh = store.get("old"), store.get("fresh")
    assert old is not None and old.state is TaskState.EXPIRED
    assert fresh is not None and fresh.state is waiting


def test_running_record_past_its_expiry_is_still_running(store: RecordStore) -> None:
    make(store, "b", expires_at=time.time() - 1, state=TaskState.RUNNING)
    info = store.get("b")
    assert info is not None and info.state is TaskState.RUNNING


def test_progress(store: RecordStore) -> None:
    make(store, "a")
    store.set_progress("a", 0.25, "a quarter")
    info = store.get("a")
    assert info is not None
    assert (info.progress, info.progress_message) == (0.25, "a quarter")
    assert store.get_fields("a", "progress", "progress_message", "nothing") == [
        "0.25", "a quarter", None
    ]


def test_transition_of_a_vanished_record_creates_no_stub(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    # A record can vanish (its TTL ran out) while its task still runs; the worker's
    # on_success then calls transition(). It must not write a partial hash that get()
    # cannot parse (get() would raise pydantic's ValidationError, outside BOQueueError).
    key = store.keys.task("vanished")
    store.transition("vanished", TaskState.SUCCEEDED, finished_at=time.time())
    assert not fake.exists(key), f"transition() wrote a stub record: {fake.hgetall(key)}"
    assert store.get("vanished") is None


def test_start_without_a_record_runs_and_creates_one(store: RecordStore) -> None:
    """A message sent with plain Celery send_task has no record: it runs, and gets one."""
    assert store.start("raw", "w", "unit.echo", "bo", Priority.HIGH) == ("run", 1)
    info = store.get("raw")
    assert info is not None
    assert (info.handler, info.queue, info.priority) == ("unit.echo", "bo", Priority.HIGH)
    assert info.state is TaskState.RUNNING and info.worker == "w"


def test_progress_on_an_expired_record_creates_nothing(store: RecordStore) -> None:
    store.set_progress("gone", 0.5, "half")
    assert store.get("gone") is None
    assert not store.exists("gone")
