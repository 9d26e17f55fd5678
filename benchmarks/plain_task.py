"""A plain Celery task with `bo_queue.ping`'s body: the throughput benchmark's worker imports
it (`--import benchmarks.plain_task`) to measure a worker with no bo_queue layer."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

PLAIN = "bench.plain_ping"


@shared_task(name=PLAIN)
def plain_ping(payload: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True, "at": time.time(), "echo": payload.get("echo")}
