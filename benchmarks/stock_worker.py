"""A stock Celery worker for the throughput benchmark's plain baseline: `celery -A
benchmarks.stock_worker worker`. The same settings, broker, result backend and Celery
configuration as bo_queue's (bo_queue.core.celery_app.make_celery, from BO_QUEUE_*), and
none of bo_queue's worker layer: kombu's own Redis transport, no task records, heartbeat or
bootsteps. It runs `plain_task`'s task, what a team on plain Celery would deploy."""

from __future__ import annotations

from benchmarks import plain_task  # noqa: F401  (the one task it runs)
from bo_queue.config import Settings
from bo_queue.core.celery_app import make_celery

app = make_celery(Settings.load())
