"""Handlers every bo_queue worker runs."""

from __future__ import annotations

import time
from typing import Any

from bo_queue.context import TaskContext
from bo_queue.registry import handler


@handler("bo_queue.ping")
def ping(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Answers at once: for health checks and for measuring the queue's own overhead."""
    return {"pong": True, "at": time.time(), "echo": payload.get("echo")}


@handler("bo_queue.sleep")
def sleep(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Sleeps `seconds` in `steps` steps, reporting progress and honouring cancellation."""
    seconds = float(payload.get("seconds", 1.0))
    steps = max(1, int(payload.get("steps", 10)))
    for step in range(steps):
        if ctx.cancelled:
            break
        time.sleep(seconds / steps)
        ctx.progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return {"slept_s": seconds}


@handler("bo_queue.schedule.fire")
def fire(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Sent by celery beat for a schedule: submits the scheduled task through the facade,
    or, for a study schedule, creates a study from its template (and runs it)."""
    if "study" in payload:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        spec = {**payload["study"], "name": f"{payload['study']['name']} {stamp}"}
        study = ctx.bq.studies.create_from_spec(spec)
        if study.spec.evaluator is not None and payload.get("run", True):
            ctx.bq.studies.run(study.id)
        return study.id
    handle = ctx.bq.submit(
        payload["handler"], payload.get("payload") or {}, queue=payload.get("queue"),
        priority=payload.get("priority", 1), tags=(*payload.get("tags", ()),
                                                   f"schedule:{payload['name']}"),
    )
    return handle.id

