"""Prometheus metrics for a bo_queue deployment, read from Redis at every scrape.

`BOQueueCollector(bq.monitor)` is a prometheus_client custom collector: each scrape asks
`bq.monitor.queues()` and `bq.monitor.metrics(window_s)` once and turns their answers into
gauges (every value comes from a sliding window or is a level now, so none is a counter).
`serve(bq.monitor, port)` exposes it on `http://ADDRESS:PORT/metrics` until interrupted.

A Redis that cannot be reached does not break the endpoint: the scrape answers with what
it could read and `bo_queue_scrape_error 1`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from bo_queue.errors import BOQueueError
from bo_queue.monitor.manager import Metrics, QueueStats
from bo_queue.studies.models import StudyStatus

if TYPE_CHECKING:
    from bo_queue.monitor.manager import Monitor

log = logging.getLogger(__name__)

PREFIX = "bo_queue_"

# The per-handler gauges: (suffix, help, HandlerMetrics attribute).
_HANDLER_GAUGES = (
    ("tasks_succeeded", "Tasks that succeeded in the window", "succeeded"),
    ("tasks_failed", "Tasks that failed in the window", "failed"),
    ("tasks_retried", "Retries scheduled in the window", "retried"),
    ("tasks_cancelled", "Tasks cancelled in the window", "cancelled"),
    ("task_throughput_per_minute", "Tasks that ended (succeeded or failed) per minute "
     "over the window", "throughput_per_min"),
    ("task_duration_mean_seconds", "Mean run time of the tasks that ended in the window",
     "mean_duration_s"),
    ("task_duration_p95_seconds", "95th percentile run time of the tasks that ended in "
     "the window", "p95_duration_s"),
    ("task_failure_rate", "failed / (succeeded + failed) over the window", "failure_rate"),
)


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=list(labels))


class BOQueueCollector:
    """Gauges for queues, workers, tasks per handler and studies, read at each scrape."""

    def __init__(self, monitor: Monitor, window_s: float = 300.0) -> None:
        self.monitor = monitor
        self.window_s = float(window_s)

    def describe(self) -> Iterator[Metric]:
        """The metric names, without reading Redis (the registry calls this on register)."""
        yield from self._families().values()

    def _families(self) -> dict[str, GaugeMetricFamily]:
        window = f" (window {self.window_s:g} s)"
        families = [
            _gauge("queue_length", "Messages waiting in a queue, per priority",
                   ("queue", "priority")),
            _gauge("queue_oldest_age_seconds", "How long the next task of a non-empty queue "
                   "has waited, per priority", ("queue", "priority")),
            _gauge("queue_paused", "1 if the queue is paused (bq.pause_queue), else 0",
                   ("queue",)),
            _gauge("queue_held", "Messages workers took from a paused queue and hold back, "
                   "per priority", ("queue", "priority")),
            _gauge("workers_alive", "Workers with a fresh heartbeat"),
            _gauge("tasks_running", "Tasks whose record says RUNNING"),
            _gauge("tasks_concurrent", "Tasks the live workers report running"),
            *(_gauge(name, text + window, ("handler",)) for name, text, _ in _HANDLER_GAUGES),
            _gauge("studies", "Studies per status", ("status",)),
            _gauge("study_trials_per_minute", "Trials a study completed per minute" + window,
                   ("study", "name")),
            _gauge("study_best_value", "A single-objective study's best observed value among "
                   "its feasible trials", ("study", "name")),
            _gauge("study_completed_trials", "Trials a study has completed", ("study", "name")),
            _gauge("scrape_error", "1 if this scrape could not read everything (Redis "
                   "unreachable, or a read failed); 0 otherwise"),
        ]
        return {f.name.removeprefix(PREFIX): f for f in families}

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        error = 0
        queues: list[QueueStats] | None = None
        metrics: Metrics | None = None
        try:
            queues = self.monitor.queues()
        except (BOQueueError, redis.RedisError) as exc:
            log.warning("prometheus scrape: queues: %s", exc)
            error = 1
        try:
            metrics = self.monitor.metrics(self.window_s)
        except (BOQueueError, redis.RedisError) as exc:
            log.warning("prometheus scrape: metrics: %s", exc)
            error = 1
        if queues is not None:
            _add_queues(families, queues)
        if metrics is not None:
            _add_metrics(families, metrics)
        families["scrape_error"].add_metric([], error)
        yield from families.values()


def _add_queues(families: dict[str, GaugeMetricFamily], queues: list[QueueStats]) -> None:
    paused = {stats.queue: stats.paused for stats in queues}
    for queue, is_paused in paused.items():
        families["queue_paused"].add_metric([queue], int(is_paused))
    for stats in queues:
        labels = [stats.queue, stats.priority.name.lower()]
        families["queue_length"].add_metric(labels, stats.length)
        families["queue_held"].add_metric(labels, stats.held)
        if stats.length and stats.oldest_age_s is not None:
            families["queue_oldest_age_seconds"].add_metric(labels, stats.oldest_age_s)


def _add_metrics(families: dict[str, GaugeMetricFamily], metrics: Metrics) -> None:
    families["workers_alive"].add_metric([], metrics.workers)
    families["tasks_running"].add_metric([], metrics.running)
    families["tasks_concurrent"].add_metric([], metrics.concurrent)
    for handler, stats in metrics.handlers.items():
        for name, _, attribute in _HANDLER_GAUGES:
            value = getattr(stats, attribute)
            if value is not None:
                families[name].add_metric([handler], float(value))
    by_status = {status.value: 0 for status in StudyStatus}
    by_status.update(metrics.studies_by_status)
    for status, count in sorted(by_status.items()):
        families["studies"].add_metric([status], count)
    for study in metrics.studies:
        labels = [study.id, study.name]
        families["study_trials_per_minute"].add_metric(labels, study.trials_per_min)
        families["study_completed_trials"].add_metric(labels, study.completed_trials)
        if study.best_value is not None:
            families["study_best_value"].add_metric(labels, study.best_value)


def make_registry(monitor: Monitor, window_s: float = 300.0) -> CollectorRegistry:
    """A fresh registry holding only a BOQueueCollector (no process or platform metrics)."""
    registry = CollectorRegistry()
    registry.register(BOQueueCollector(monitor, window_s))
    return registry


def serve(
    monitor: Monitor, port: int, address: str = "0.0.0.0", window_s: float = 300,
    *, stop: threading.Event | None = None,
) -> None:
    """Serve the metrics on http://ADDRESS:PORT/metrics until KeyboardInterrupt (or until
    `stop` is set, for embedding and tests)."""
    httpd, thread = start_http_server(port, addr=address, registry=make_registry(monitor, window_s))
    log.info("serving bo_queue metrics on http://%s:%d/metrics", address, port)
    stop = stop or threading.Event()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
