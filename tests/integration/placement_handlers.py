"""Handlers for tests/integration/test_placement.py: capabilities, limits, resources,
versions and async handlers. Evidence goes to Redis under `evidence:placement:*`."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bo_queue import TaskContext, handler
from tests.integration.handlers import evidence

# KEYS: running counter, peak. Keeps the highest number of runs seen at once.
_ENTER = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""


def _measured(group: str, seconds: float) -> str:
    """Sleep `seconds` while counted as running in `group`; which worker ran it."""
    running, peak = f"evidence:placement:{group}:running", f"evidence:placement:{group}:peak"
    evidence().eval(_ENTER, 2, running, peak)
    evidence().rpush(f"evidence:placement:{group}:starts", time.time())
    try:
        time.sleep(seconds)
    finally:
        evidence().decr(running)
    return os.environ.get("TEST_WORKER_NAME", "?")


@handler("p.gpu_job", requires=("gpu",))
def gpu_job(payload: dict[str, Any], ctx: TaskContext) -> str:
    return os.environ.get("TEST_WORKER_NAME", "?")


@handler("p.anywhere")
def anywhere(payload: dict[str, Any], ctx: TaskContext) -> str:
    return os.environ.get("TEST_WORKER_NAME", "?")


@handler("p.limited", max_concurrency=2)
def limited(payload: dict[str, Any], ctx: TaskContext) -> str:
    return _measured(payload["group"], float(payload["seconds"]))


@handler("p.rated", rate_limit="5/s")
def rated(payload: dict[str, Any], ctx: TaskContext) -> str:
    return _measured(payload["group"], 0.0)


@handler("p.heavy", resources={"cpu": 2})
def heavy(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Burns CPU for `seconds` and logs what it did."""
    ctx.log.info("burning %s s", payload["seconds"])
    deadline = time.process_time() + float(payload["seconds"])
    total = 0
    while time.process_time() < deadline:
        total += sum(range(1000))
    running = _measured(payload["group"], 0.2)
    ctx.log.warning("done after %d sums", total // 499500)
    return running


@handler("p.versioned", version="2")
def versioned(payload: dict[str, Any], ctx: TaskContext) -> str:
    return "v2"


@handler("p.async_steps")
async def async_steps(payload: dict[str, Any], ctx: TaskContext) -> int:
    """Takes `steps` steps of 0.1 s, reporting progress; stops when cancelled."""
    steps = int(payload["steps"])
    for step in range(steps):
        await asyncio.sleep(0.1)
        await asyncio.to_thread(ctx.progress, (step + 1) / steps, f"step {step + 1}")
    return steps


@handler("p.async_slow", time_limit=1)
async def async_slow(payload: dict[str, Any], ctx: TaskContext) -> str:
    await asyncio.sleep(30)
    return "never"
