"""Watching bo_queue: queues, workers, metrics and events (manager), webhooks, health checks,
Prometheus metrics, structured logs and the terminal status page."""

from bo_queue.core.events import Event
from bo_queue.monitor.manager import Metrics, Monitor, QueueStats, Summary, WorkerStatus
from bo_queue.monitor.webhooks import (
    DeadLetter,
    WebhookInfo,
    Webhooks,
    WebhookSink,
    WebhookSpec,
)

__all__ = ["DeadLetter", "Event", "Metrics", "Monitor", "QueueStats", "Summary", "WebhookInfo",
           "WebhookSink", "WebhookSpec", "Webhooks", "WorkerStatus"]
