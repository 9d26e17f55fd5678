"""Calling a handler: plain or `async def`, with what the run cost measured.

An `async def` handler runs on an event loop of its own in the worker process (or pool
thread) that took the task. While it runs, a watcher polls for cancellation and cancels
the coroutine, so `await` points are where it stops; its time limit is enforced on the
loop (`asyncio.timeout`), which also works in the threads pool, where Celery's signal
based limits do not. In a prefork child, where Celery's signal stops the run at the
limit, the loop's own comes SIGNAL_FIRST_S later, as a backstop: both at once, the
second landed in Celery's code after the first's TaskTimeoutError, and replaced it.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import threading
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from bo_queue.context import TaskContext
from bo_queue.errors import TaskCancelledError
from bo_queue.registry import HandlerSpec

CANCEL_POLL_S = 0.2
# An async handler's own limit, past Celery's signal when one stops the run (prefork)
SIGNAL_FIRST_S = 1.0


def run_handler(spec: HandlerSpec, payload: dict[str, Any], ctx: TaskContext,
                time_limit_s: float | None, signalled: bool = False) -> Any:
    """Call the handler; `ctx.usage` says what the run cost, whatever the outcome.
    `signalled`: Celery's soft time limit stops this run at `time_limit_s` (prefork), and
    an async handler's loop keeps its own only as a backstop, SIGNAL_FIRST_S later."""
    started, cpu_started = time.perf_counter(), _cpu_time()
    try:
        if spec.is_async:
            own = time_limit_s + SIGNAL_FIRST_S if signalled and time_limit_s else time_limit_s
            return asyncio.run(_run_async(spec, payload, ctx, own))
        return spec.fn(payload, ctx)
    finally:
        ctx.usage = {
            "wall_s": round(time.perf_counter() - started, 6),
            "cpu_s": round(_cpu_time() - cpu_started, 6),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }


def _cpu_time() -> float:
    # A prefork or solo worker runs one task per process at a time: the process's CPU
    # time is the task's (threads it starts included). A threads-pool worker shares its
    # process: count the thread that runs the handler.
    if threading.current_thread() is threading.main_thread():
        return time.process_time()
    return time.thread_time()


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def _run_async(spec: HandlerSpec, payload: dict[str, Any], ctx: TaskContext,
                     time_limit_s: float | None) -> Any:
    handler = asyncio.ensure_future(spec.fn(payload, ctx))
    watcher = asyncio.ensure_future(_watch_cancel(ctx, handler))
    limit = asyncio.timeout(time_limit_s)
    try:
        async with limit:
            return await handler
    except TimeoutError:
        if not limit.expired():  # the handler's own TimeoutError (a network call's)
            raise
        raise SoftTimeLimitExceeded(f"time limit of {time_limit_s} s exceeded") from None
    except asyncio.CancelledError:
        if ctx.cancel_seen:
            raise TaskCancelledError(ctx.task_id, "cancelled while running") from None
        raise
    finally:
        watcher.cancel()


async def _watch_cancel(ctx: TaskContext, handler: asyncio.Future[Any]) -> None:
    while not handler.done():
        await asyncio.sleep(CANCEL_POLL_S)
        if await asyncio.to_thread(lambda: ctx.cancelled):
            handler.cancel()
            return
