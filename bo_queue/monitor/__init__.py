"""Watching bo_queue: queues, workers, metrics and events (manager), webhooks, health checks,
Prometheus metrics, structured logs and the terminal status page."""

from bo_queue.core.events import Event
from bo_queue.monitor.manager import Metrics, Monitor, QueueStats, Summary, WorkerStatus
from bo_queue.monitor.webhooks import Webhooks, WebhookSink

__all__ = ["Event", "Metrics", "Monitor", "QueueStats", "Summary", "WebhookSink", "Webhooks",
           "WorkerStatus"]
