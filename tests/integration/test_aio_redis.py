"""The asyncio facade's connections (bo_queue.core.aio_redis) on a real Redis: a held
connection never hands a call the reply of another, a reply that does not come is a
timeout of redis-py's, a connection the server closed is connected afresh, and no more
than HELD are kept from the pool."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from bo_queue.config import Settings
from bo_queue.core.aio_redis import HELD, POOL_SIZE, HeldConnections, async_client

Scenario = Callable[[HeldConnections], Awaitable[None]]


@asynccontextmanager
async def connections(redis_url: str) -> AsyncIterator[HeldConnections]:
    client = async_client(Settings(redis_url=redis_url), redis_url, decode_responses=True,
                          socket_timeout=0.5)
    held = HeldConnections(client)
    try:
        yield held
    finally:
        await held.close()
        await client.aclose()


def on_loop(redis_url: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with connections(redis_url) as held:
            await scenario(held)

    asyncio.run(main())


async def run(held: HeldConnections, *command: Any) -> Any:
    pipe = held.pipeline(transaction=False)
    pipe.execute_command(*command)
    [reply] = await held.execute(pipe)
    return reply


def key() -> str:
    return f"aio-redis:{uuid.uuid4().hex}"


def test_a_call_cancelled_mid_reply_leaves_no_reply_for_the_next(redis_url: str) -> None:
    waiting, answer = key(), key()

    async def scenario(held: HeldConnections) -> None:
        await run(held, "SET", answer, "the answer")
        blocked = asyncio.create_task(run(held, "BLPOP", waiting, 0.4))
        await asyncio.sleep(0.1)  # sent: Redis holds the BLPOP
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        # the next call takes the same connection: had it been kept, its GET would wait
        # behind the BLPOP on the server and then read the BLPOP's reply
        assert len(held.idle) == 1
        get = asyncio.create_task(run(held, "GET", answer))
        await asyncio.sleep(0.1)
        redis.Redis.from_url(redis_url).rpush(waiting, "late")
        assert await get == "the answer"

    on_loop(redis_url, scenario)


def test_no_reply_within_the_socket_timeout_is_redis_timeout_error(redis_url: str) -> None:
    async def scenario(held: HeldConnections) -> None:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError, match=r"within 0\.5 s"):
            await run(held, "BLPOP", key(), 3)
        assert time.monotonic() - started < 2.0
        [conn] = held.idle
        assert conn.socket_timeout == 0.5  # restored for the pool's other users
        assert await run(held, "PING") is True

    on_loop(redis_url, scenario)


def test_a_connection_the_server_closed_while_idle_is_connected_afresh(
    redis_url: str,
) -> None:
    async def scenario(held: HeldConnections) -> None:
        mine = await run(held, "CLIENT", "ID")
        redis.Redis.from_url(redis_url).client_kill_filter(_id=str(mine))
        await asyncio.sleep(0.1)  # an idle spell: the loop reads the server's close
        assert await run(held, "PING") is True
        assert await run(held, "CLIENT", "ID") != mine

    on_loop(redis_url, scenario)


def test_at_most_held_connections_are_kept_and_the_pool_serves_the_rest(
    redis_url: str,
) -> None:
    async def scenario(held: HeldConnections) -> None:
        # every connection of the pool busy at once, with the held calls
        replies = await asyncio.gather(*(run(held, "BLPOP", key(), 0.1)
                                         for _ in range(POOL_SIZE)))
        assert replies == [None] * POOL_SIZE
        assert len(held.idle) == HELD
        # what is not kept went back to the pool: the client's own commands find them
        others = POOL_SIZE - HELD
        pings = asyncio.gather(*(held.client.blpop([key()], 0.1)
                                 for _ in range(others)))
        assert await asyncio.wait_for(pings, 3) == [None] * others

    on_loop(redis_url, scenario)


def test_pipelines_that_call_scripts_take_no_connection_of_their_own(redis_url: str) -> None:
    """A pipeline with a script first asks the server whether it has it: on the held
    connection, or the pool loses a connection a call (only a pipeline's reset() gives
    it back) and hangs once POOL_SIZE calls have run."""
    async def scenario(held: HeldConnections) -> None:
        script = held.client.register_script("return 7")

        async def call() -> Any:
            pipe = held.pipeline(transaction=False)
            await script(keys=[], args=[], client=pipe)  # queued on the pipeline
            [reply] = await held.execute(pipe)
            return reply

        replies = [await asyncio.wait_for(call(), 5) for _ in range(POOL_SIZE + 10)]
        assert replies == [7] * (POOL_SIZE + 10)
        assert len(held.idle) == 1

    on_loop(redis_url, scenario)
