"""The README's handler module: `bo-queue worker --import examples.reports`."""

from __future__ import annotations

from typing import Any

from bo_queue import RetryPolicy, TaskContext, handler


@handler("reports.build", queue="default", time_limit=300,
         retry=RetryPolicy(max_retries=5, backoff=1.0, backoff_max=60, jitter=True,
                           on=(ConnectionError,)))
def build(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    start = (ctx.last_checkpoint or {"part": 0})["part"]  # resume after a retry or a lost worker
    parts = []
    for part in range(start, payload.get("parts", 10)):
        if ctx.cancelled:  # cooperative cancellation
            break
        parts.append(ctx.spawn("reports.part", {"part": part}).id)  # a linked subtask
        ctx.checkpoint({"part": part + 1})
        ctx.progress((part + 1) / payload.get("parts", 10), f"part {part + 1}")
    return {"ok": True, "parts": parts}


@handler("reports.part")
def part(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return {"part": payload["part"], "rows": 100 * payload["part"]}
