"""Per-submit retry policies and time limits, time limits that say so (on every pool),
and run history (TaskInfo.runs), with real workers on a real Redis, and over HTTP through
a real `bo-queue api` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from bo_queue import (
    BOQueue,
    ConfigurationError,
    ResultTimeoutError,
    RetryPolicy,
    TaskError,
    TaskFailedError,
    TaskInfo,
    TaskRequest,
    TaskState,
    TaskTimeoutError,
    ValidationError,
)
from bo_queue.core.records import MAX_RUNS
from bo_queue.testing import wait_until
from tests.conftest import ROOT, Cluster, new_namespace
from tests.integration.api_server import api_client
from tests.integration.handlers import TransientError

POLICY_HANDLERS = ("tests.integration.policy_handlers",)
QUEUES = "default,threads,solo"
SETTINGS = {"queues": QUEUES, "hold_delays_over_s": "1", "visibility_timeout_s": "60"}
TRANSIENT = "tests.integration.handlers.TransientError"


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    c = Cluster(redis_url, new_namespace(), dict(SETTINGS))
    c.start_workers({"concurrency": 2, "imports": POLICY_HANDLERS})
    yield c
    c.close()


@pytest.fixture
def bq(cluster: Cluster) -> BOQueue:
    return cluster.producer()


def ended(bq: BOQueue, task_id: str, runs: int) -> TaskInfo:
    """The record once it has ended with `runs` runs (the worker writes it just after
    the result get() returns; info() already says so from the result, so ask the record)."""
    def done() -> bool:
        state = bq.records.state(task_id)
        return state is not None and state.terminal and len(bq.info(task_id).runs) == runs
    wait_until(done, 30, what=f"task {task_id} to end after {runs} runs")
    return bq.info(task_id)


def task_keys(bq: BOQueue) -> list[str]:
    return sorted(bq.redis.scan_iter(f"{bq.keys.namespace}:task:*"))


# -- time limits --------------------------------------------------------------------------


def test_a_task_past_its_submits_time_limit_fails_with_task_timeout_error(bq: BOQueue) -> None:
    started = time.monotonic()
    h = bq.submit("pol.sleep", {"seconds": 30}, time_limit=1)
    with pytest.raises(TaskTimeoutError) as caught:
        h.get(timeout=30)
    assert time.monotonic() - started < 10  # stopped at 1 s, not after 30
    exc = caught.value
    assert isinstance(exc, TaskFailedError) and isinstance(exc, TimeoutError)
    assert exc.remote_type == "bo_queue.errors.TaskTimeoutError"
    assert str(exc) == f"task {h.id} ran past its time limit of 1 s"
    info = ended(bq, h.id, 1)
    assert info.state is TaskState.FAILED
    assert info.error == f"TaskTimeoutError: task {h.id} ran past its time limit of 1 s"
    [run] = info.runs
    assert (run.attempt, run.outcome, run.error) == (1, "FAILED", info.error)


def test_a_submits_time_limit_replaces_its_handlers(bq: BOQueue) -> None:
    # pol.limited declares 1 s: this task may take 4
    assert bq.submit("pol.limited", {"seconds": 1.5}, time_limit=4).get(timeout=30) == "in time"
    with pytest.raises(TaskTimeoutError):  # and without one, its handler's 1 s holds
        bq.submit("pol.limited", {"seconds": 1.5}).get(timeout=30)


def test_the_hard_limit_stops_a_handler_that_ignores_the_soft_one(bq: BOQueue) -> None:
    h = bq.submit("t.stuck_eval", {}, queue="default", time_limit=1)  # it swallows the soft
    with pytest.raises(TaskTimeoutError) as caught:
        h.get(timeout=40)  # 1 s, plus the grace
    assert caught.value.remote_type.endswith("TimeLimitExceeded")
    assert "ran past its time limit" in str(caught.value)


def test_get_that_gives_up_waiting_is_not_how_the_task_ended(bq: BOQueue) -> None:
    h = bq.submit("pol.sleep", {"seconds": 1.5})
    with pytest.raises(ResultTimeoutError) as caught:
        h.get(timeout=0.1)
    assert not isinstance(caught.value, TaskError) and isinstance(caught.value, TimeoutError)
    assert caught.value.task_id == h.id
    assert h.get(timeout=30) == "slept"  # the task went on


def test_a_time_limit_survives_a_held_send(bq: BOQueue) -> None:
    h = bq.submit("pol.sleep", {"seconds": 30}, countdown=1.5, time_limit=1)  # held: > 1 s
    assert bq.info(h.id).state is TaskState.PENDING
    with pytest.raises(TaskTimeoutError):
        h.get(timeout=30)


# -- retry policies -----------------------------------------------------------------------


def test_a_submits_retry_policy_replaces_its_handlers(bq: BOQueue) -> None:
    # pol.fails has no retry policy of its own: without one it fails at once
    with pytest.raises(TaskFailedError):
        bq.submit("pol.fails", {"times": 1}).get(timeout=30)
    policy = RetryPolicy(max_retries=3, backoff=0.05, jitter=False, on=(TransientError,))
    h = bq.submit("pol.fails", {"times": 2}, retry=policy)
    assert h.get(timeout=30) == 3
    info = ended(bq, h.id, 3)
    assert [r.outcome for r in info.runs] == ["RETRYING", "RETRYING", "SUCCEEDED"]
    assert [r.attempt for r in info.runs] == [1, 2, 3]
    assert [r.log for r in info.runs] == [(f"INFO attempt {n}",) for n in (1, 2, 3)]
    assert [r.error for r in info.runs] == [
        "TransientError: attempt 1 failed", "TransientError: attempt 2 failed", None]
    for run in info.runs:
        assert run.worker == info.worker and run.usage and run.usage["wall_s"] >= 0
        assert run.started_at and run.finished_at and run.started_at <= run.finished_at


def test_the_record_keeps_a_submits_policies_and_bq_retry_reuses_them(bq: BOQueue) -> None:
    policy = RetryPolicy(max_retries=1, backoff=0, backoff_max=0, on=(TransientError,))
    h = bq.submit("pol.fails", {"times": 2}, retry=policy, time_limit=20)
    with pytest.raises(TaskFailedError):
        h.get(timeout=30)
    info = ended(bq, h.id, 2)
    assert info.retry is not None and info.retry.describe() == policy.describe()
    assert info.time_limit == 20
    assert bq.info(bq.submit("pol.fails", {}).id).retry is None  # the handler's hold
    again = bq.retry(h.id)  # the same policy: two runs again, not one
    with pytest.raises(TaskFailedError):
        again.get(timeout=30)
    retried = ended(bq, again.id, 2)
    assert [r.outcome for r in retried.runs] == ["RETRYING", "FAILED"]
    assert retried.retry == info.retry and retried.time_limit == 20


def test_a_retry_policy_by_name_retries_only_what_it_names(bq: BOQueue) -> None:
    named = {"max_retries": 2, "backoff": 0, "backoff_max": 0, "on": [TRANSIENT]}
    [transient, other] = bq.submit_many([
        TaskRequest(handler="pol.fails", payload={"times": 1}, retry=RetryPolicy(**named)),
        {"handler": "pol.fails", "payload": {"times": 1, "error": "value"}, "retry": named},
    ])
    assert transient.get(timeout=30) == 2
    with pytest.raises(TaskFailedError, match="ValueError"):
        other.get(timeout=30)
    assert [r.outcome for r in ended(bq, other.id, 1).runs] == ["FAILED"]


def test_a_retry_policy_survives_held_retries(bq: BOQueue) -> None:
    # a backoff over hold_delays_over_s (1 s) waits in Redis, and is sent from there
    policy = RetryPolicy(max_retries=2, backoff=1.2, jitter=False, on=(TransientError,))
    h = bq.submit("pol.fails", {"times": 5}, retry=policy)
    wait_until(lambda: bq.redis.zscore(bq.keys.delayed, h.id) is not None, 20,
               what="the retry to be held")
    with pytest.raises(TaskFailedError, match="attempt 3 failed"):
        h.get(timeout=60)
    assert [r.outcome for r in ended(bq, h.id, 3).runs] == ["RETRYING", "RETRYING", "FAILED"]


def test_run_history_keeps_the_latest_runs(bq: BOQueue) -> None:
    runs = MAX_RUNS + 5
    policy = RetryPolicy(max_retries=runs - 1, backoff=0, backoff_max=0, on=(TransientError,))
    h = bq.submit("pol.fails", {"times": runs}, retry=policy)
    with pytest.raises(TaskFailedError):
        h.get(timeout=120)
    info = ended(bq, h.id, MAX_RUNS)
    assert [r.attempt for r in info.runs] == list(range(runs - MAX_RUNS + 1, runs + 1))
    assert info.runs[-1].outcome == "FAILED" and info.attempts == runs
    # it expires with the record, and goes when the task is deleted
    runs_key = bq.keys.runs(h.id)
    assert 0 < bq.redis.ttl(runs_key) <= bq.redis.ttl(bq.keys.task(h.id)) + 5
    bq.delete(h.id)
    assert not bq.redis.exists(runs_key)


def test_a_run_cancelled_while_running_is_in_the_history(bq: BOQueue, evidence: redis.Redis,
                                                          ) -> None:
    h = bq.submit("pol.until_cancelled", {})
    wait_until(lambda: evidence.exists(f"evidence:policy:started:{h.id}"), 30, what="start")
    bq.cancel(h.id)
    [run] = ended(bq, h.id, 1).runs
    assert run.outcome == "CANCELLED" and run.log[-1].endswith("waiting to be cancelled")


def test_bad_policies_are_refused_and_nothing_is_written(bq: BOQueue) -> None:
    before = task_keys(bq)
    for bad, says in [
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": 60}, "visibility_timeout_s"),  # the cluster's is 60 s
        ({"retry": {"max_retries": -1}}, "max_retries"),
        ({"retry": {"on": ["not a name"]}}, "dotted name"),
        ({"retry": {"on": ["NoSuchBuiltinError"]}}, "NoSuchBuiltinError"),
        ({"retry": "often"}, "retry"),
    ]:
        with pytest.raises(ValidationError, match=says):
            bq.submit("pol.fails", {}, **bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="request 1: .*" + says):
            bq.submit_many([{"handler": "pol.fails"}, {"handler": "pol.fails", **bad}])
    bq.agents.declare_type("pol.pulled")  # agents run it: no policy of bo_queue's
    for bad in ({"time_limit": 5}, {"retry": RetryPolicy(max_retries=1)}):
        with pytest.raises(ValidationError, match="pull task type"):
            bq.submit("pol.pulled", {}, **bad)  # type: ignore[arg-type]
    assert task_keys(bq) == before


# -- time limits per pool -----------------------------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_worker_whose_pool_cannot_keep_a_handlers_time_limit_refuses_to_start(
    redis_url: str, pool: str
) -> None:
    cluster = Cluster(redis_url, new_namespace(), dict(SETTINGS))
    try:
        with pytest.raises(RuntimeError) as caught:  # its queue serves pol.limited (1 s)
            cluster.start_workers({"pool": pool, "imports": POLICY_HANDLERS,
                                   "queues": ("default",)})
        assert "handler 'pol.limited' is not async and has a time limit of 1 s" in str(
            caught.value)
        [worker] = cluster.workers
        assert worker.process is not None and worker.process.wait(10) != 0
        assert not cluster.producer().heartbeats.has(worker.hostname)  # it never served
    finally:
        cluster.close()


def test_on_a_threads_pool_limits_hold_or_the_task_says_why(redis_url: str) -> None:
    cluster = Cluster(redis_url, new_namespace(), dict(SETTINGS))
    try:  # a queue with no limited plain handler: it starts
        cluster.start_workers({"pool": "threads", "concurrency": 2, "imports": POLICY_HANDLERS,
                               "queues": ("threads",)})
        bq = cluster.producer()
        with pytest.raises(TaskTimeoutError):  # async: kept on its event loop
            bq.submit("pol.async_sleep", {"seconds": 30}, queue="threads",
                      time_limit=1).get(timeout=30)
        plain = bq.submit("pol.sleep", {"seconds": 30}, queue="threads", time_limit=1)
        with pytest.raises(TaskFailedError) as caught:  # plain: refused, never run unlimited
            plain.get(timeout=30)
        assert caught.value.remote_type.endswith(ConfigurationError.__name__)
        assert "'pol.sleep' is not async and has a time limit of 1 s" in str(caught.value)
        assert not redis.Redis.from_url(redis_url).exists(
            f"evidence:policy:started:{plain.id}")
        assert bq.submit("pol.sleep", {"seconds": 0.1}, queue="threads").get(timeout=30)
    finally:
        cluster.close()


# -- lost runs ----------------------------------------------------------------------------


def test_a_run_lost_with_its_worker_is_in_the_history(redis_url: str,
                                                       evidence: redis.Redis) -> None:
    cluster = Cluster(redis_url, new_namespace(), {"visibility_timeout_s": "10",
                                                  "restore_sweep_s": "1",
                                                  "hold_delays_over_s": "5"})
    try:
        [victim] = cluster.start_workers({"imports": POLICY_HANDLERS})
        bq = cluster.producer()
        h = bq.submit("pol.sleep", {"seconds": 4})
        wait_until(lambda: evidence.exists(f"evidence:policy:started:{h.id}"), 30,
                   what="the first run")
        victim.kill()
        cluster.start_workers({"imports": POLICY_HANDLERS})
        assert h.get(timeout=90) == "slept"
        info = ended(bq, h.id, 2)
        assert [(r.attempt, r.outcome) for r in info.runs] == [(1, "LOST"), (2, "SUCCEEDED")]
        assert info.runs[0].worker == victim.hostname
        assert info.runs[0].error == "lost with its worker"
    finally:
        cluster.close()


# -- over HTTP and in the CLI -------------------------------------------------------------


@pytest.fixture(scope="module")
def http(redis_url: str, cluster: Cluster) -> Iterator[httpx.Client]:
    with api_client(redis_url, cluster.namespace, "policies", timeout=60) as session:
        yield session


def test_http_submit_takes_a_retry_policy_and_a_time_limit(
    http: httpx.Client, bq: BOQueue
) -> None:
    body = {"handler": "pol.fails", "payload": {"times": 1},
            "retry": {"max_retries": 1, "backoff": 0, "backoff_max": 0, "on": [TRANSIENT]}}
    created = http.post("/tasks", json=body)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert bq.handle(task_id).get(timeout=30) == 2
    ended(bq, task_id, 2)
    record = http.get(f"/tasks/{task_id}").json()
    assert record["retry"] == {**body["retry"], "jitter": True}
    runs = record["runs"]
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "RETRYING"), (2, "SUCCEEDED")]
    assert runs[0]["error"] == "TransientError: attempt 1 failed" and runs[1]["usage"]

    slow = http.post("/tasks", json={"handler": "pol.sleep", "payload": {"seconds": 30},
                                     "time_limit": 1}).json()["id"]
    with pytest.raises(TaskTimeoutError):
        bq.handle(slow).get(timeout=30)
    answer = http.get(f"/tasks/{slow}/result")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "TaskTimeoutError"
    assert "ran past its time limit of 1 s" in answer.json()["detail"]


def test_http_refuses_bad_policies_and_writes_nothing(http: httpx.Client, bq: BOQueue) -> None:
    before = task_keys(bq)
    for bad in ({"time_limit": -1}, {"time_limit": "soon"},
                {"time_limit": 4000},  # over the API's visibility_timeout_s (3600 s)
                {"retry": {"max_retries": 2, "on": ["no such name"]}},
                {"retry": {"max_retries": 2, "tries": 3}}, {"retry": [1]}):
        answer = http.post("/tasks", json={"handler": "pol.fails", **bad})
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["error"] == "ValidationError"
        batch = http.post("/tasks/batch", json=[{"handler": "pol.fails"},
                                                {"handler": "pol.fails", **bad}])
        assert batch.status_code == 422, (bad, batch.text)
    assert task_keys(bq) == before


def test_the_cli_shows_a_tasks_runs(bq: BOQueue, cluster: Cluster, redis_url: str) -> None:
    h = bq.submit("pol.fails", {"times": 1},
                  retry=RetryPolicy(max_retries=1, backoff=0, on=(TransientError,)))
    assert h.get(timeout=30) == 2
    ended(bq, h.id, 2)
    out = subprocess.run(
        [sys.executable, "-m", "bo_queue.cli", "task", "info", h.id], capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT),
                                    "BO_QUEUE_REDIS_URL": redis_url,
                                    "BO_QUEUE_NAMESPACE": cluster.namespace},
    )
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert [r["outcome"] for r in runs] == ["RETRYING", "SUCCEEDED"]
