"""redis.asyncio for the asyncio facade, at the sync client's cost a call.

On Python 3.11 redis.asyncio spends about 100 us on a pipeline beside its round trip: the
pool's Condition and timeout, a probe of the socket, a Task for the shielded release of
the connection and another for each write's asyncio.wait_for, and packing in Python.
The facade's calls (bo_queue.aio) run their pipelines on connections held between calls
(HeldConnections), each attempt bounded by one asyncio.timeout, on connections that pack
in C (PackedConnection): the same commands, replies, errors and retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from bo_queue.config import Settings
from bo_queue.core.connections import async_redis_client

POOL_SIZE = 50  # connections per client, shared by every call in flight
POOL_WAIT_S = 20.0  # how long a call waits for one (then ConnectionError)
HELD = 16  # connections kept between calls at most: the rest of the pool is for the others


def async_client(settings: Settings, url: str, **options: Any) -> aioredis.Redis:
    """A client whose pool makes coroutines wait for a free connection (at most
    POOL_SIZE, however many calls are in flight) rather than fail."""
    if url.startswith("redis://") and HIREDIS_AVAILABLE:  # TLS, sockets, Sentinel: their own
        options["connection_class"] = PackedConnection
    return async_redis_client(
        settings, url, max_connections=POOL_SIZE, pool_wait_s=POOL_WAIT_S,
        socket_connect_timeout=settings.connect_timeout_s, **options)


class PackedConnection(aioredis.Connection):
    """redis.asyncio's connection, packing commands in C with hiredis as redis-py's sync
    client does (redis.asyncio packs them in Python: most of a submit's CPU time)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)
        return packed


class HeldPipeline(aioredis.client.Pipeline):
    """A client's pipeline, run by HeldConnections.execute rather than `execute()`."""

    async def execute_on(self, conn: Any) -> list[Any]:
        """What `execute()` does once it has a connection: load the scripts it calls,
        send the commands, read and parse the replies (raising the first error), and
        retry by the connection's Retry, reconnecting after each failure."""
        # load_scripts asks on the pipeline's connection, or takes one from the pool that
        # only reset() would give back: it asks on the held one
        self.connection = conn
        try:
            if self.scripts:
                await self.load_scripts()  # type: ignore[no-untyped-call]
            transaction = self.is_transaction or self.explicit_transaction
            run = self._execute_transaction if transaction else self._execute_pipeline
            stack = self.command_stack
            replies: list[Any] = await conn.retry.call_with_retry(
                lambda: _bounded(conn, run(conn, stack, True)),
                lambda _error: conn.disconnect())
        finally:
            self.connection = None  # held: not the pipeline's to give back
        return replies


async def _bounded(conn: Any, attempt: Awaitable[list[Any]]) -> list[Any]:
    """One attempt within the connection's socket_timeout, as a whole: one
    asyncio.timeout, in place of a wait_for Task for the write and a timeout a reply.
    The connection is this call's alone meanwhile (HeldConnections)."""
    timeout, conn.socket_timeout = conn.socket_timeout, None
    try:
        async with asyncio.timeout(timeout):
            return await attempt
    except TimeoutError:  # asyncio's: raised as redis-py's own, which callers expect
        raise redis.exceptions.TimeoutError(f"no reply from Redis within {timeout} s") from None
    finally:
        conn.socket_timeout = timeout


class HeldConnections:
    """The connections of a client's pool that its pipelines run on, kept between calls
    rather than taken from the pool and given back each time: taken as concurrent calls
    need them, so the pool's cap and wait still hold, and no more than HELD kept, so that
    the client's own commands always find one; close() gives them back."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.idle: list[Any] = []

    def pipeline(self, transaction: bool) -> HeldPipeline:
        return HeldPipeline(self.client.connection_pool, self.client.response_callbacks,
                            transaction, None)

    async def execute(self, pipe: HeldPipeline) -> list[Any]:
        pool = self.client.connection_pool
        if self.idle:
            conn = self.idle.pop()
        else:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # a connection the server closed while it was idle, or that holds data nobody
            # asked for, is connected afresh (a look at its buffers; redis-py's pool skips
            # it while maintenance notifications are on, its default)
            if conn.is_connected and await conn.can_read():
                await conn.disconnect()
            # (a call cancelled or failed mid-reply disconnects in redis-py, for the next)
            return await pipe.execute_on(conn)
        finally:
            if len(self.idle) < HELD:
                self.idle.append(conn)
            else:
                await pool.release(conn)

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            await self.client.connection_pool.release(conn)
