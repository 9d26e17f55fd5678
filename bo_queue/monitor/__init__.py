"""Watching bo_queue: queues, workers, metrics and events (manager), health checks,
Prometheus metrics, structured logs and the terminal status page."""

from bo_queue.monitor.manager import (
    Event,
    Metrics,
    Monitor,
    QueueStats,
    Summary,
    WebhookSink,
    WorkerStatus,
)

__all__ = ["Event", "Metrics", "Monitor", "QueueStats", "Summary", "WebhookSink", "WorkerStatus"]
