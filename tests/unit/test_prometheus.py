"""The Prometheus collector and endpoint on fakeredis: tasks written through the record
store (so the event stream fills as in production), heartbeats as workers write them,
kombu-like messages on the queue lists, and a study."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import bo_queue.core.records
from bo_queue import BOQueue, Priority, TaskState
from bo_queue.core.message import Message
from bo_queue.errors import BrokerUnavailableError
from bo_queue.monitor.prometheus import BOQueueCollector, make_registry, serve
from bo_queue.studies.models import Objective, Range, StudyStatus, Trial, TrialStatus
from bo_queue.testing import free_port, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- writing state as production does -----------------------------------------------------


class Clock:
    """bo_queue.core.records' clock, so run times are exact."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = time.time() - 120
        monkeypatch.setattr(bo_queue.core.records, "time", SimpleNamespace(time=lambda: self.now))


def create(bq: BOQueue, task_id: str, handler: str, queue: str = "default",
           priority: Priority = Priority.NORMAL, created_at: float | None = None) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {
            "id": task_id, "handler": handler, "queue": queue, "priority": priority,
            "tags": (), "parent_id": None, "state": TaskState.QUEUED,
            "created_at": time.time() if created_at is None else created_at,
        })
        pipe.execute()


def run(bq: BOQueue, clock: Clock, task_id: str, handler: str, end: TaskState | None,
        duration: float = 1.0) -> None:
    create(bq, task_id, handler)
    verdict, _ = bq.records.start(task_id, "w1@host", handler, "default", Priority.NORMAL)
    assert verdict == "run"
    if end is not None:
        clock.now += duration
        assert bq.records.transition(task_id, end, finished_at=clock.now)


def heartbeat(bq: BOQueue, hostname: str, queues: list[str], *, active: int = 0,
              concurrency: int = 2, age_s: float = 0.5) -> None:
    at = time.time() - age_s
    bq.redis.hset(bq.keys.workers, hostname, json.dumps({
        "at": at, "queues": queues, "concurrency": concurrency, "active": active,
        "pid": 4242, "started_at": at - 60,
    }))


def enqueue(bq: BOQueue, task_id: str, queue: str, priority: Priority = Priority.NORMAL,
            age_s: float = 0.0, handler: str = "report.build") -> None:
    create(bq, task_id, handler, queue, priority, created_at=time.time() - age_s)
    suffix = f":{priority.broker_priority}" if priority.broker_priority else ""
    bq.redis.lpush(bq.keys.broker_prefix + queue + suffix,
                   json.dumps({"headers": {"id": task_id}, "body": ""}))


def add_study(bq: BOQueue, completed: int, best: float) -> str:
    studies = bq.studies
    study = studies.create("tune", [Range("x", 0.0, 1.0)], [Objective("loss")])
    for to in (StudyStatus.INITIALIZING, StudyStatus.ACTIVE):
        current = studies.get(study.id).status
        assert studies.store.set_status(study.id, to, {current}) is to
    now = datetime.now(UTC)
    trials = [
        Trial(index=i, params={"x": 0.1 * i}, status=TrialStatus.COMPLETED,
              values={"loss": best + i}, created_at=now, finished_at=now)
        for i in range(completed)
    ]
    studies.store.save_step(study.model_copy(update={"completed_trials": completed}),
                            trials, None, 0)
    return study.id


# -- reading the exposition ---------------------------------------------------------------


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, key
            out[key] = sample.value
    return out


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


# -- tests --------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def test_handler_metrics_over_the_window(bq: BOQueue, clock: Clock) -> None:
    for i in range(9):
        run(bq, clock, f"ok{i}", "train.fit", TaskState.SUCCEEDED, duration=i + 1)
    run(bq, clock, "bad", "train.fit", TaskState.FAILED, duration=10)
    run(bq, clock, "again", "train.fit", TaskState.RETRYING)
    create(bq, "gone", "train.fit")
    assert bq.records.cancel("gone", "not needed") is TaskState.QUEUED
    run(bq, clock, "r1", "report.build", TaskState.SUCCEEDED, duration=2)
    run(bq, clock, "r2", "report.build", None)  # still running

    samples = scrape(make_registry(bq.monitor, window_s=300))

    fit = {"handler": "train.fit"}
    assert value(samples, "bo_queue_tasks_succeeded", **fit) == 9
    assert value(samples, "bo_queue_tasks_failed", **fit) == 1
    assert value(samples, "bo_queue_tasks_retried", **fit) == 1
    assert value(samples, "bo_queue_tasks_cancelled", **fit) == 1
    assert value(samples, "bo_queue_task_throughput_per_minute", **fit) == 2.0  # 10 in 5 min
    assert value(samples, "bo_queue_task_duration_mean_seconds", **fit) == 5.5
    assert value(samples, "bo_queue_task_duration_p95_seconds", **fit) == 10.0
    assert value(samples, "bo_queue_task_failure_rate", **fit) == 0.1
    report = {"handler": "report.build"}
    assert value(samples, "bo_queue_tasks_succeeded", **report) == 1
    assert value(samples, "bo_queue_tasks_failed", **report) == 0
    assert value(samples, "bo_queue_task_failure_rate", **report) == 0.0
    assert value(samples, "bo_queue_task_duration_mean_seconds", **report) == 2.0
    assert value(samples, "bo_queue_tasks_running") == 1
    assert value(samples, "bo_queue_scrape_error") == 0


def test_queues_workers_and_studies(bq: BOQueue) -> None:
    for i in range(3):
        enqueue(bq, f"d{i}", "default", age_s=60 - i)
    enqueue(bq, "urgent", "bo", Priority.HIGH, age_s=5)
    heartbeat(bq, "w1@host", ["default", "bo"], active=1)
    heartbeat(bq, "w2@host", ["evaluate"], active=2)
    heartbeat(bq, "dead@host", ["default"], active=5, age_s=bq.settings.heartbeat_timeout_s + 5)
    study_id = add_study(bq, completed=4, best=0.25)

    samples = scrape(make_registry(bq.monitor))

    assert value(samples, "bo_queue_queue_length", queue="default", priority="normal") == 3
    assert value(samples, "bo_queue_queue_length", queue="bo", priority="high") == 1
    assert value(samples, "bo_queue_queue_length", queue="evaluate", priority="low") == 0
    lengths = [k for k in samples if k[0] == "bo_queue_queue_length"]
    assert len(lengths) == 3 * len(Priority)  # every queue, every priority
    age = value(samples, "bo_queue_queue_oldest_age_seconds", queue="default", priority="normal")
    assert age == pytest.approx(60, abs=5)
    assert value(samples, "bo_queue_queue_oldest_age_seconds",
                 queue="bo", priority="high") == pytest.approx(5, abs=5)
    ages = [k for k in samples if k[0] == "bo_queue_queue_oldest_age_seconds"]
    assert len(ages) == 2  # only non-empty queues have an age

    assert value(samples, "bo_queue_workers_alive") == 2  # the stale heartbeat is gone
    assert value(samples, "bo_queue_tasks_concurrent") == 3

    assert value(samples, "bo_queue_studies", status="ACTIVE") == 1
    assert value(samples, "bo_queue_studies", status="COMPLETED") == 0
    study = {"study": study_id, "name": "tune"}
    assert value(samples, "bo_queue_study_completed_trials", **study) == 4
    assert value(samples, "bo_queue_study_best_value", **study) == 0.25
    assert value(samples, "bo_queue_study_trials_per_minute", **study) == pytest.approx(4 / 5)
    assert value(samples, "bo_queue_scrape_error") == 0


def test_an_empty_deployment_is_valid_exposition(bq: BOQueue) -> None:
    text = generate_latest(make_registry(bq.monitor)).decode()
    samples = parse(text)
    assert value(samples, "bo_queue_workers_alive") == 0
    assert value(samples, "bo_queue_scrape_error") == 0
    # every family is announced, even those without samples now
    for name in ("bo_queue_queue_oldest_age_seconds", "bo_queue_tasks_succeeded",
                 "bo_queue_study_best_value"):
        assert f"# TYPE {name} gauge" in text


def test_redis_down_is_a_scrape_error_not_a_crash(
    bq: BOQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailableError("Redis at redis://127.0.0.1:1/0 is unavailable")

    enqueue(bq, "d0", "default")
    monkeypatch.setattr(bq.monitor, "metrics", down)
    samples = scrape(make_registry(bq.monitor))
    assert value(samples, "bo_queue_scrape_error") == 1
    assert "bo_queue_workers_alive" not in names(samples)
    # what could still be read is kept
    assert value(samples, "bo_queue_queue_length", queue="default", priority="normal") == 1

    monkeypatch.setattr(bq.monitor, "queues", down)
    samples = scrape(make_registry(bq.monitor))
    assert names(samples) == {"bo_queue_scrape_error"}
    assert value(samples, "bo_queue_scrape_error") == 1


def test_each_scrape_reads_queues_and_metrics_once(
    bq: BOQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monitor = bq.monitor
    queues, metrics = monitor.queues, monitor.metrics

    def counted_queues() -> Any:
        calls.append("queues")
        return queues()

    def counted_metrics(window_s: float) -> Any:
        calls.append(f"metrics({window_s:g})")
        return metrics(window_s)

    monkeypatch.setattr(monitor, "queues", counted_queues)
    monkeypatch.setattr(monitor, "metrics", counted_metrics)
    registry = CollectorRegistry()
    registry.register(BOQueueCollector(bq.monitor, window_s=60))
    assert calls == []  # registering reads nothing
    generate_latest(registry)
    assert sorted(calls) == ["metrics(60)", "queues"]


def test_serve_over_http(bq: BOQueue, clock: Clock) -> None:
    run(bq, clock, "ok", "train.fit", TaskState.SUCCEEDED, duration=3)
    heartbeat(bq, "w1@host", ["default"])
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(bq.monitor, port), kwargs={"address": "127.0.0.1", "stop": stop},
        daemon=True,
    )
    thread.start()
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(up, timeout=10, what="the metrics endpoint")
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain")
            samples = parse(reply.read().decode())
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert value(samples, "bo_queue_tasks_succeeded", handler="train.fit") == 1
    assert value(samples, "bo_queue_task_duration_mean_seconds", handler="train.fit") == 3.0
    assert value(samples, "bo_queue_workers_alive") == 1
    assert value(samples, "bo_queue_scrape_error") == 0


def test_a_paused_queue_and_what_its_workers_hold_back(bq: BOQueue) -> None:
    enqueue(bq, "p0", "default")
    bq.pause_queue("default")
    for task_id in ("p1", "p2"):
        create(bq, task_id, "report.build", priority=Priority.HIGH)
        message = Message(handler="report.build", payload={}, queue="default",
                          priority=Priority.HIGH.broker_priority)
        verdict, _ = bq.records.start(task_id, "w1@host", "report.build", "default",
                                      Priority.HIGH, held=message)
        assert verdict == "held"
    samples = scrape(make_registry(bq.monitor))
    assert value(samples, "bo_queue_queue_paused", queue="default") == 1
    assert value(samples, "bo_queue_queue_paused", queue="bo") == 0
    assert value(samples, "bo_queue_queue_held", queue="default", priority="high") == 2
    assert value(samples, "bo_queue_queue_held", queue="default", priority="normal") == 0
    assert value(samples, "bo_queue_queue_length", queue="default", priority="normal") == 1
