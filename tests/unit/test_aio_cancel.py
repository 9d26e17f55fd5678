"""A cancelled `AsyncTaskHandle.get()` stops even when an await below swallowed the
cancel: on Python 3.11 asyncio.wait_for (redis.asyncio sends every command through it)
returns normally when the cancel lands as the send completes (CPython gh-86296), and
the wait loops check bo_queue.aio._honour_cancel before they go round again."""

from __future__ import annotations

import asyncio

import pytest

from bo_queue.aio import _honour_cancel


async def _sent() -> None:  # a send that completes at its first step
    return None


def test_a_cancel_that_wait_for_swallowed_still_ends_the_loop() -> None:
    reached: list[str] = []

    async def waiting() -> None:
        await asyncio.wait_for(_sent(), 5)  # the cancel lands as the send completes
        reached.append("past the send")
        _honour_cancel()
        reached.append("past the check")

    async def scenario() -> None:
        task = asyncio.create_task(waiting())
        await asyncio.sleep(0)  # it awaits wait_for's waiter; the send is scheduled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert "past the check" not in reached


def test_without_a_cancel_the_check_lets_the_loop_go_on() -> None:
    async def loop_once() -> str:
        _honour_cancel()
        return "went on"

    assert asyncio.run(loop_once()) == "went on"
