"""Handlers for tests/integration/test_policies.py: per-submit retry policies and time
limits, time limits per pool, run history. None retries on its own; evidence goes to
Redis under `evidence:policy:*`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bo_queue import TaskContext, handler
from tests.integration.handlers import TransientError, evidence


@handler("pol.fails")
def fails(payload: dict[str, Any], ctx: TaskContext) -> int:
    """Raises `payload["error"]` (TransientError or ValueError) in its first
    `payload["times"]` attempts; logs each attempt through ctx.log."""
    ctx.log.info("attempt %d", ctx.attempt)
    if ctx.attempt <= payload.get("times", 0):
        kind = ValueError if payload.get("error") == "value" else TransientError
        raise kind(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@handler("pol.sleep")
def sleep(payload: dict[str, Any], ctx: TaskContext) -> str:
    evidence().set(f"evidence:policy:started:{ctx.task_id}", ctx.attempt)
    time.sleep(payload["seconds"])
    return "slept"


@handler("pol.async_sleep")
async def async_sleep(payload: dict[str, Any], ctx: TaskContext) -> str:
    await asyncio.sleep(payload["seconds"])
    return "slept"


@handler("pol.limited", time_limit=1)
def limited(payload: dict[str, Any], ctx: TaskContext) -> str:
    time.sleep(payload["seconds"])
    return "in time"


@handler("pol.until_cancelled")
def until_cancelled(payload: dict[str, Any], ctx: TaskContext) -> str:
    ctx.log.info("waiting to be cancelled")
    evidence().set(f"evidence:policy:started:{ctx.task_id}", ctx.attempt)
    deadline = time.monotonic() + 60
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    return "stopped"
