"""Tasks end to end on real workers: results, failures, retries, progress, callbacks,
delays, checkpoints, subtasks and hooks."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from bo_queue import (
    BOQueue,
    Priority,
    ResultTimeoutError,
    TaskFailedError,
    TaskState,
    TaskTimeoutError,
    UnknownHandlerError,
    UnknownTaskError,
    ValidationError,
)
from bo_queue.testing import wait_until


def test_result_and_record(bq: BOQueue) -> None:
    h = bq.submit("t.echo", {"x": 1}, priority="high", tags=("a", "b"))
    assert h.get(timeout=20) == {"x": 1}
    info = bq.info(h.id)
    assert info.state is TaskState.SUCCEEDED and h.ready()
    assert (info.handler, info.queue, info.priority) == ("t.echo", "default", Priority.HIGH)
    assert info.tags == ("a", "b") and info.attempts == 1 and info.progress == 1.0
    assert info.worker and info.started_at and info.finished_at
    assert info.created_at <= info.started_at <= info.finished_at


def test_name_description_metadata_on_a_run_task(bq: BOQueue) -> None:
    experiment = f"e-{time.time_ns()}"
    meta = {"experiment": experiment, "seed": 3, "grid": {"lr": [0.1, 0.01]}}
    h = bq.submit("t.echo", {"x": 2}, name="sweep", description="a run to read back",
                  metadata=meta)
    other = bq.submit_many([{"handler": "t.echo", "name": "sweep",
                             "metadata": {"experiment": experiment, "seed": 4}}])[0]
    assert h.get(timeout=20) == {"x": 2} and other.get(timeout=20) == {}
    # the worker writes the record (and its state index, which tasks() reads) just after
    # the result that get() returned
    for handle in (h, other):
        wait_until(lambda handle=handle: bq.records.state(handle.id) is TaskState.SUCCEEDED,
                   10, what=f"the record of {handle.id}")
    info = bq.info(h.id)
    assert info.state is TaskState.SUCCEEDED and info.attempts == 1
    assert (info.name, info.description, info.metadata, info.created_by) == (
        "sweep", "a run to read back", meta, None)
    found = bq.tasks(name="sweep", metadata={"experiment": experiment, "seed": 3})
    assert [t.id for t in found] == [h.id]
    both = bq.tasks(TaskState.SUCCEEDED, metadata={"experiment": experiment})
    assert {t.id for t in both} == {h.id, other.id}
    assert bq.tasks(name="not it", metadata={"experiment": experiment}) == []


def test_submit_many_runs_every_task(bq: BOQueue) -> None:
    handles = bq.submit_many({"handler": "t.echo", "payload": {"i": i}} for i in range(50))
    assert len({h.id for h in handles}) == 50
    assert [h.get(timeout=30)["i"] for h in handles] == list(range(50))


def test_unknown_handler_is_rejected_at_submit(bq: BOQueue, evidence: redis.Redis) -> None:
    before = len(evidence.keys(f"{bq.keys.namespace}:task:*"))
    with pytest.raises(UnknownHandlerError, match=r"no\.such\.handler"):
        bq.submit("no.such.handler", {})
    assert len(evidence.keys(f"{bq.keys.namespace}:task:*")) == before


def test_handler_exception_comes_back_as_task_failed(bq: BOQueue) -> None:
    h = bq.submit("t.flaky", {"fatal": True})
    with pytest.raises(TaskFailedError) as caught:
        h.get(timeout=20)
    assert caught.value.remote_type == "ValueError"
    assert caught.value.remote_message == "not retryable"
    assert "raise ValueError" in (caught.value.remote_traceback or "")
    info = bq.info(h.id)
    assert info.state is TaskState.FAILED and info.attempts == 1  # not retried
    assert info.error == "ValueError: not retryable"


def test_non_json_result_fails_with_a_clear_message(bq: BOQueue) -> None:
    with pytest.raises(TaskFailedError) as caught:
        bq.submit("t.bad_result", {}).get(timeout=20)
    assert caught.value.remote_type.endswith("InvalidResultError")
    assert "not JSON-serialisable" in caught.value.remote_message
    assert "'t.bad_result'" in caught.value.remote_message


def _attempt_times(evidence: redis.Redis, task_id: str) -> list[float]:
    return [float(t) for t in evidence.lrange(f"evidence:attempts:{task_id}", 0, -1)]


def test_retry_twice_then_succeed_with_growing_backoff(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    h = bq.submit("t.flaky", {"fail_times": 2})
    wait_until(lambda: h.state is TaskState.RETRYING, 10, 0.01, "the RETRYING state")
    assert h.get(timeout=30) == {"attempt": 3}
    times = _attempt_times(evidence, h.id)
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # backoff 0.4 s then 0.8 s (no jitter): each wait at least its delay, the second longer
    assert gaps[0] >= 0.35 and gaps[1] >= 0.75 and gaps[1] > gaps[0]
    info = bq.info(h.id)
    assert info.state is TaskState.SUCCEEDED and info.attempts == 3 and info.retries == 2


def test_retries_exhausted_fail_with_the_last_error(bq: BOQueue, evidence: redis.Redis) -> None:
    h = bq.submit("t.flaky", {"fail_times": 99})
    with pytest.raises(TaskFailedError) as caught:
        h.get(timeout=60)
    assert caught.value.remote_type.endswith("TransientError")
    assert caught.value.remote_message == "attempt 4 failed"  # max_retries=3: 4 attempts
    assert len(_attempt_times(evidence, h.id)) == 4
    assert bq.info(h.id).state is TaskState.FAILED


def test_progress_is_seen_from_the_producer(bq: BOQueue) -> None:
    h = bq.submit("t.progress", {"steps": 5, "step_s": 0.3})
    seen: list[float] = []
    deadline = time.monotonic() + 20
    while not h.ready() and time.monotonic() < deadline:
        fraction, _ = h.progress
        if not seen or fraction != seen[-1]:
            seen.append(fraction)
        time.sleep(0.05)
    assert h.get(timeout=5) == {"steps": 5}
    partial = [f for f in seen if 0 < f < 1]
    assert len(partial) >= 2, seen
    assert seen == sorted(seen)
    assert h.progress.fraction == 1.0


def test_then_callbacks_fire_in_the_producer(bq: BOQueue) -> None:
    got: dict[str, Any] = {}
    done = threading.Event()

    def record(kind: str) -> Any:
        def callback(value: Any) -> None:
            got[kind] = value
            if len(got) == 2:
                done.set()
        return callback

    bq.submit("t.echo", {"ok": 1}).then(record("ok"), record("unexpected error"))
    bq.submit("t.flaky", {"fatal": True}).then(record("unexpected ok"), record("error"))
    assert done.wait(20), got
    assert got["ok"] == {"ok": 1}
    assert isinstance(got["error"], TaskFailedError)
    # a callback registered after the task finished fires too
    h = bq.submit("t.echo", {"late": 1})
    h.get(timeout=20)
    late = threading.Event()
    h.then(lambda value: late.set())
    assert late.wait(10)


def test_get_times_out_with_a_clear_error(bq: BOQueue) -> None:
    h = bq.submit("t.sleep", {"seconds": 2})
    with pytest.raises(ResultTimeoutError):
        h.get(timeout=0.2)
    assert h.get(timeout=20) == "slept"


def test_time_limit_fails_a_slow_task(bq: BOQueue) -> None:
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError) as caught:  # a TaskFailedError that says why
        bq.submit("t.too_slow", {}).get(timeout=20)
    assert caught.value.remote_type == "bo_queue.errors.TaskTimeoutError"
    assert time.monotonic() - started < 4.5  # stopped at its 1 s limit, not after 5 s


@contextmanager
def failure_endings(redis_url: str) -> Iterator[list[str]]:
    """The script calls (EVALSHA, as clients send them, not the commands scripts run) that
    end a record FAILED, seen by MONITOR on the test's Redis while the block runs."""
    seen: list[str] = []
    stop = threading.Event()
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def watch(monitor: Any) -> None:
        while not stop.is_set():
            command = monitor.next_command()
            text = command["command"]
            if (command["client_type"] != "lua" and text.startswith(("EVALSHA ", "EVAL "))
                    and " FAILED " in f"{text} "):
                seen.append(text)

    with client.monitor() as monitor:
        thread = threading.Thread(target=watch, args=(monitor,), daemon=True)
        thread.start()
        try:
            yield seen
        finally:
            stop.set()
            client.ping()  # wakes the watcher (workers' heartbeats would too)
            thread.join(5)
    client.close()


def test_a_failure_ends_its_record_with_one_script_call(bq: BOQueue, redis_url: str) -> None:
    # Load the script first (no record, no change): a first call is sent twice, the
    # EVALSHA that finds no script and the one after redis-py loaded it.
    assert bq.records.transition("no-such-task", TaskState.FAILED) is False
    with failure_endings(redis_url) as seen:
        handle = bq.submit("t.fail_until_fixed", {"fixed": "evidence:never-fixed"})
        with pytest.raises(TaskFailedError):
            handle.get(timeout=20)
        wait_until(lambda: bq.records.get(handle.id).state is TaskState.FAILED,  # type: ignore[union-attr]
                   10, what="the record to say FAILED")
        time.sleep(1.0)  # a second writer would follow at once, in the same worker
    mine = [text for text in seen if f" {handle.id} " in text]
    assert len(mine) == 1, "\n".join(mine)
    info = bq.info(handle.id)
    assert info.error and "not fixed yet" in info.error
    assert info.usage is not None  # the one write carries the run's report


def test_countdown_delays_the_start(bq: BOQueue) -> None:
    h = bq.submit("t.echo", {}, countdown=1.5)
    assert bq.info(h.id).state is TaskState.QUEUED
    h.get(timeout=20)
    info = bq.info(h.id)
    assert info.started_at is not None and info.due_at is not None
    assert (info.started_at - info.created_at).total_seconds() >= 1.4


def test_checkpoint_survives_a_retry(bq: BOQueue) -> None:
    h = bq.submit("t.checkpointed", {})
    assert h.get(timeout=20) == {"resumed_from": 3, "attempt": 2}


def test_spawned_children_are_linked(bq: BOQueue) -> None:
    parent = bq.submit("t.spawner", {"children": 3})
    child_ids = parent.get(timeout=20)
    assert sorted(bq.info(parent.id).children) == sorted(child_ids)
    for child_id in child_ids:
        assert bq.info(child_id).parent_id == parent.id
        assert bq.handle(child_id).get(timeout=20)["child"] in (0, 1, 2)


def test_lifecycle_hooks_run_on_the_worker(bq: BOQueue, evidence: redis.Redis) -> None:
    ok = bq.submit("t.hooked", {})
    bad = bq.submit("t.hooked", {"fail": True})
    assert ok.get(timeout=20) == "ok"
    with pytest.raises(TaskFailedError):
        bad.get(timeout=20)
    # get() returns once the result is stored; the hooks run just after it
    for task, hooks in ((ok, ["retry", "success"]), (bad, ["retry", "failure"])):
        key = f"evidence:hooks:{task.id}"
        wait_until(lambda key=key: evidence.llen(key) >= 2, 10, what="the end hook")
        assert evidence.lrange(key, 0, -1) == hooks


def _hooks(evidence: redis.Redis, task_id: str, count: int) -> list[str]:
    key = f"evidence:hooks:{task_id}"
    # get() returns once the result is stored; the end hook runs just after it
    wait_until(lambda: evidence.llen(key) >= count, 10, what="the end hook")
    return list(evidence.lrange(key, 0, -1))


def test_a_class_handler_runs_and_its_hook_runs_on_the_same_instance(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    h = bq.submit("t.class_echo", {"echo": "hi"})
    assert h.get(timeout=20) == {"echo": "hi", "attempt": 1}
    assert _hooks(evidence, h.id, 1) == ["success:same"]
    assert bq.info(h.id).state is TaskState.SUCCEEDED
    entry = bq.refresh_handlers()["t.class_echo"]
    assert entry["module"] == "tests.integration.handlers"
    assert entry["retry"]["max_retries"] == 2


def test_a_class_handler_fails_then_retries_with_its_policy(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    h = bq.submit("t.class_echo", {"echo": 7, "fail_times": 2})
    assert h.get(timeout=30) == {"echo": 7, "attempt": 3}
    assert int(evidence.hget("evidence:runs", h.id) or 0) == 3
    # backoff 0.2 s then 0.4 s (no jitter); the hooks are the instance's methods
    assert _hooks(evidence, h.id, 3) == ["retry 0.2:same", "retry 0.4:same", "success:same"]
    info = bq.info(h.id)
    assert info.state is TaskState.SUCCEEDED and info.attempts == 3 and info.retries == 2

    spent = bq.submit("t.class_echo", {"fail_times": 99})
    with pytest.raises(TaskFailedError) as caught:
        spent.get(timeout=30)
    assert caught.value.remote_type.endswith("TransientError")
    assert caught.value.remote_message == "attempt 3 failed"  # max_retries=2: 3 attempts
    assert _hooks(evidence, spent.id, 3) == ["retry 0.2:same", "retry 0.4:same", "failure:same"]


def test_unknown_task_ids_are_errors(bq: BOQueue) -> None:
    for call in (bq.info, bq.handle, bq.cancel):
        with pytest.raises(UnknownTaskError):
            call("no-such-task")



def test_delete_an_ended_task(bq: BOQueue) -> None:
    h = bq.submit("t.checkpointed", {}, tags=("to-delete",))
    assert h.get(timeout=20) == {"resumed_from": 3, "attempt": 2}
    wait_until(lambda: bq.records.state(h.id) is TaskState.SUCCEEDED, timeout=20)
    assert bq.redis.exists(bq.keys.checkpoint(h.id))
    running = bq.submit("t.sleep", {"seconds": 3})
    wait_until(lambda: bq.info(running.id).state is TaskState.RUNNING, timeout=20)
    with pytest.raises(ValidationError, match="has not ended"):
        bq.delete(running.id)
    assert running.get(timeout=20) == "slept"
    # the result is stored a moment before the worker ends the record
    wait_until(lambda: bq.records.state(running.id) is TaskState.SUCCEEDED, timeout=20)
    bq.delete(running.id)

    bq.delete(h.id)
    with pytest.raises(UnknownTaskError):
        bq.info(h.id)
    assert bq.results.fetch(h.id) is None
    assert not bq.redis.exists(bq.keys.checkpoint(h.id))
    assert h.id not in bq.records.tagged("to-delete")
    assert h.id not in {t.id for t in bq.tasks(TaskState.SUCCEEDED, limit=1000)}
    with pytest.raises(UnknownTaskError):
        bq.delete(h.id)
