"""Handlers the demo's workers import (`--import bo_queue.demo.handlers`)."""

from __future__ import annotations

from typing import Any

from bo_queue.context import TaskContext
from bo_queue.registry import handler
from bo_queue.retry import RetryPolicy


class Flaky(Exception):
    pass


@handler("demo.square")
def square(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return {"square": payload["x"] ** 2}


@handler("demo.flaky", retry=RetryPolicy(max_retries=3, backoff=0.2, jitter=False, on=(Flaky,)))
def flaky(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    if ctx.attempt <= payload["fail_times"]:
        raise Flaky(f"attempt {ctx.attempt} fails on purpose")
    return {"ok": True, "attempt": ctx.attempt}


@handler("demo.fail")
def fail(payload: dict[str, Any], ctx: TaskContext) -> None:
    raise ValueError(payload["why"])
