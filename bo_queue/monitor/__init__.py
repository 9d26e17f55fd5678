"""Watching bo_queue: queues, workers, metrics and events (manager), health checks,
Prometheus metrics, structured logs and the terminal status page."""

from bo_queue.monitor.manager import Monitor

__all__ = ["Monitor"]
