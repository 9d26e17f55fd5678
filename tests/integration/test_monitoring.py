"""Monitoring on real workers: metrics, the failed registry and retry, listings, queue
stats, worker liveness, event subscriptions and webhooks."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bo_queue import BOQueue, Priority, TaskState
from bo_queue.monitor.manager import Event, WebhookSink
from bo_queue.testing import free_port, wait_until
from tests.conftest import ROOT, Cluster, make_cluster


@pytest.fixture(scope="module")
def watched(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=2, concurrency=2, HEARTBEAT_TIMEOUT_S="3")
    yield c
    c.close()


@pytest.fixture
def bq(watched: Cluster) -> BOQueue:
    return watched.producer()


def test_metrics_count_100_tasks_with_10_failures_exactly_and_retry_runs_one_again(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    fixed = f"evidence:fixed:{uuid.uuid4().hex}"
    failing = {i for i in range(100) if i % 10 == 3}
    handles = bq.submit_many([
        {"handler": "t.fail_until_fixed", "payload": {"fixed": fixed if i in failing else None}}
        for i in range(100)
    ])
    def ended(task_id: str) -> bool:  # the record itself (info() may go by the result)
        record = bq.records.get(task_id)
        return record is not None and record.state.terminal

    for handle in handles:
        wait_until(lambda h=handle: ended(h.id), 60, what="every task to end")
    metrics = bq.monitor.metrics(window_s=300)
    mine = metrics.handlers["t.fail_until_fixed"]
    assert (mine.succeeded, mine.failed, mine.started, mine.retried) == (90, 10, 100, 0)
    assert mine.failure_rate == pytest.approx(0.1)
    assert mine.mean_duration_s is not None and mine.p95_duration_s is not None
    assert mine.p95_duration_s >= mine.mean_duration_s * 0.5

    failed_ids = {h.id for i, h in enumerate(handles) if i in failing}
    registry = bq.failed()
    assert {info.id for info in registry} == failed_ids
    assert all(info.error == "ValueError: not fixed yet" for info in registry)
    listed = bq.tasks(TaskState.FAILED, handler="t.fail_until_fixed", limit=50)
    assert {info.id for info in listed} == failed_ids

    evidence.set(fixed, 1)
    one = sorted(failed_ids)[0]
    again = bq.retry(one)
    assert again.get(timeout=30) == "ok"
    assert bq.info(one).retried_as == again.id
    assert one not in {info.id for info in bq.failed()}
    assert bq.info(again.id).handler == "t.fail_until_fixed"


def test_queue_stats_per_priority_with_the_oldest_age(bq: BOQueue, watched: Cluster) -> None:
    # A queue no worker consumes ("evaluate" is configured; this cluster serves "default").
    bq.submit("t.echo", {}, queue="evaluate", priority=Priority.LOW)
    bq.submit("t.echo", {}, queue="evaluate", priority=Priority.CRITICAL)
    bq.submit("t.echo", {}, queue="evaluate", priority=Priority.CRITICAL)
    stats = {(s.queue, s.priority): s for s in bq.monitor.queues()}
    assert stats[("evaluate", Priority.CRITICAL)].length == 2
    assert stats[("evaluate", Priority.LOW)].length == 1
    assert stats[("evaluate", Priority.NORMAL)].length == 0
    low = stats[("evaluate", Priority.LOW)].oldest_age_s
    assert low is not None and low >= 0
    assert stats[("evaluate", Priority.NORMAL)].oldest_age_s is None
    # clean up: these would otherwise wait for a worker that never comes
    for task in bq.tasks(TaskState.QUEUED, queue="evaluate"):
        bq.cancel(task.id)


def test_a_subscriber_receives_every_state_change_of_a_task_in_order(bq: BOQueue) -> None:
    seen: list[Event] = []
    done = threading.Event()
    mine_ids: list[str] = []  # the cluster is shared: other tests' tasks may still end

    def collect(event: Event) -> None:
        seen.append(event)
        if event.id in mine_ids and event.state in ("SUCCEEDED", "FAILED"):
            done.set()

    with bq.monitor.subscribe(collect, events=("task",)) as _:
        handle = bq.submit("t.flaky", {"fail_times": 1})
        mine_ids.append(handle.id)  # (it retries once first: its end comes well after)
        assert done.wait(30)
    mine = [e for e in seen if e.id == handle.id]
    assert [e.state for e in mine] == ["QUEUED", "RUNNING", "RETRYING", "RUNNING", "SUCCEEDED"]
    assert [e.attempt for e in mine] == [0, 1, 1, 2, 2]
    assert mine[-1].duration is not None and mine[-1].handler == "t.flaky"
    # the same, read back from the stream
    again = [e.state for e in bq.monitor.events() if e.id == handle.id]
    assert again == [e.state for e in mine]


def test_study_changes_are_events(bq: BOQueue) -> None:
    from bo_queue import Objective, Range

    seen: list[Event] = []
    with bq.monitor.subscribe(seen.append, events=("study",)):
        study = bq.studies.create(name="watched", parameters=[Range("x", 0.0, 1.0)],
                                  objectives=[Objective("loss")])
        bq.studies.fail(study.id, "stopped by the test")
        wait_until(lambda: len([e for e in seen if e.id == study.id]) >= 2, 10,
                   what="two study events")
    mine = [e for e in seen if e.id == study.id]
    assert [e.state for e in mine] == ["CREATED", "FAILED"]
    assert mine[1].message == "stopped by the test"


def test_webhook_delivery_retries_until_it_lands(bq: BOQueue) -> None:
    received: list[dict[str, Any]] = []
    calls: list[int] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(1)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if len(calls) == 1:  # the first delivery fails: the sink must retry
                self.send_response(500)
            else:
                received.append(json.loads(body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = WebhookSink(f"http://127.0.0.1:{server.server_port}/hook", backoff_s=0.05)
        handle_ids: list[str] = []
        with bq.monitor.subscribe(sink, events=("task",), states=("SUCCEEDED",)):
            handle = bq.submit("t.echo", {"hook": True})
            handle_ids.append(handle.id)
            handle.get(timeout=30)
            wait_until(lambda: any(r["id"] == handle.id for r in received), 15,
                       what="the webhook to receive the event")
        assert len(calls) >= 2 and sink.failed == 0
        assert [r["state"] for r in received if r["id"] == handle.id] == ["SUCCEEDED"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_killed_worker_leaves_workers_within_the_heartbeat_window(redis_url: str) -> None:
    cluster = make_cluster(redis_url, workers=2, concurrency=1, HEARTBEAT_TIMEOUT_S="3")
    try:
        bq = cluster.producer()
        names = {w.hostname for w in cluster.workers}
        wait_until(lambda: {w.hostname for w in bq.monitor.workers()} == names, 15,
                   what="both workers to show")
        alive = bq.monitor.workers(inspect=True, timeout=2)
        assert all(w.queues == ["default"] and w.concurrency == 1 for w in alive)
        assert all(w.inspected and "stats" in w.inspected for w in alive)
        victim = cluster.workers[0]
        victim.kill()
        wait_until(lambda: victim.hostname not in {w.hostname for w in bq.monitor.workers()},
                   3 + 3, what="the killed worker to disappear")
        # and the other one stays listed: on a loaded machine its own beat may run a
        # window late too, and it is listed again at the next one
        survivor = {cluster.workers[1].hostname}
        wait_until(lambda: {w.hostname for w in bq.monitor.workers()} == survivor, 3 + 3,
                   what="the live worker to be listed alone")
    finally:
        cluster.close()


def _cli(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": cluster.redis_url,
           "BO_QUEUE_NAMESPACE": cluster.namespace, "BO_QUEUE_HEARTBEAT_TIMEOUT_S": "3",
           "BO_QUEUE_QUEUES": "default"}
    return subprocess.run([sys.executable, "-m", "bo_queue.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_health_turns_non_zero_when_the_only_worker_dies(redis_url: str) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=1, HEARTBEAT_TIMEOUT_S="3",
                           QUEUES="default")
    try:
        wait_until(lambda: bool(cluster.producer().monitor.workers()), 10, what="the worker")
        healthy = _cli(cluster, "health", "--no-beat")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "workers:default" in healthy.stdout
        status = _cli(cluster, "status")
        assert status.returncode == 0 and cluster.workers[0].hostname in status.stdout
        cluster.workers[0].kill()
        wait_until(lambda: not cluster.producer().monitor.workers(), 6,
                   what="the worker to be gone")
        sick = _cli(cluster, "health", "--no-beat")
        assert sick.returncode == 1
        assert "FAIL" in sick.stdout and "workers:default" in sick.stdout
        assert _cli(cluster, "health").returncode == 1  # and no beat runs here either
    finally:
        cluster.close()


def test_prometheus_endpoint_serves_valid_exposition(bq: BOQueue, watched: Cluster) -> None:
    handles = [bq.submit("t.fail_until_fixed", {"fixed": None}) for _ in range(5)]
    for handle in handles:
        handle.get(timeout=30)
    # each SUCCEEDED event is written with the record, just after the result
    wait_until(lambda: all(bq.records.state(h.id) is TaskState.SUCCEEDED for h in handles),
               10, what="the records to end")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": watched.redis_url,
           "BO_QUEUE_NAMESPACE": watched.namespace}
    server = subprocess.Popen(
        [sys.executable, "-m", "bo_queue.cli", "metrics", "--port", str(port),
         "--address", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return str(r.read().decode())
            except OSError:
                return None

        wait_until(lambda: scrape() is not None, 30, what="the metrics endpoint")
        text = scrape()
        assert text is not None
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families.values() for s in f.samples}
        assert samples[("bo_queue_scrape_error", ())] == 0
        assert samples[("bo_queue_tasks_succeeded", (("handler", "t.fail_until_fixed"),))] >= 5
        assert samples[("bo_queue_workers_alive", ())] == 2
        assert ("bo_queue_queue_length", (("priority", "normal"), ("queue", "default"))) in samples
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
