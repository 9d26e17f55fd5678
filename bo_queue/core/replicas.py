"""Writes that wait for replicas (BO_QUEUE_REPLICA_ACKS): Redis WAIT after a pipeline.

WAIT blocks until N replicas have acknowledged every write the *connection* made, or
its timeout passes, and replies how many did. So it must run on the connection that
made the write, after it: inside MULTI it would not block at all (Redis refuses to block
in a transaction and answers at once). redis-py returns a pipeline's connection to its
pool as soon as the pipeline ran, so the pipelines here send the WAIT in the same packed
write as their commands (MULTI ... EXEC WAIT): one round trip, on that connection.

This is the one adapter over redis-py's private pipeline methods (`_execute_transaction`,
`_execute_pipeline`), for the pinned redis-py; tests/integration/test_replica_acks.py
runs it against a real primary and replica.

The replication stream is one ordered log, and a replica holds a prefix of it: a replica
that acknowledged a write has every earlier write of every connection too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.client
import redis.client
from redis.commands.core import Script

from bo_queue.core.steps import Pipe
from bo_queue.errors import ReplicaAckError

T = TypeVar("T")


class ReplicaAcks:
    """How many replicas a must-not-lose write waits for, and how long (0: none, and
    the pipelines are the client's own)."""

    def __init__(self, replicas: int, timeout_s: float) -> None:
        self.replicas = replicas
        self.timeout_s = timeout_s

    @property
    def enabled(self) -> bool:
        return self.replicas > 0

    def wait_args(self) -> tuple[str, int, int]:
        return "WAIT", self.replicas, max(1, round(self.timeout_s * 1000))

    def check(self, acked: int | None, detail: str = "") -> None:
        """ReplicaAckError unless `acked` (WAIT's reply; None: no reply) is enough."""
        if acked is None or acked < self.replicas:
            raise ReplicaAckError(acked, self.replicas, self.timeout_s, detail)

    def pipeline(self, client: redis.Redis, transaction: bool = True) -> redis.client.Pipeline:
        """A pipeline of `client` whose execute() also waits for the replicas, and raises
        ReplicaAckError when too few acknowledged (the commands have run by then)."""
        if not self.enabled:
            return client.pipeline(transaction=transaction)
        return AckedPipeline(self, client.connection_pool, client.response_callbacks,
                             transaction, None)

    def step_pipeline(self, client: redis.Redis, kind: Pipe) -> redis.client.Pipeline:
        """The pipeline a step asks for (bo_queue.core.steps): a write's waits for the
        replicas."""
        if kind in (Pipe.READ, Pipe.PLAIN):
            return client.pipeline(transaction=False)
        return self.pipeline(client, transaction=kind is Pipe.ATOMIC)

    def async_pipeline(
        self, client: redis.asyncio.Redis, transaction: bool = True
    ) -> redis.asyncio.client.Pipeline:
        """`pipeline` for an asyncio client."""
        if not self.enabled:
            return client.pipeline(transaction=transaction)
        return AsyncAckedPipeline(self, client.connection_pool, client.response_callbacks,
                                  transaction, None)

    def call(self, client: redis.Redis, script: Script, keys: Sequence[Any],
             args: Sequence[Any], then: Callable[[Any], T]) -> T:
        """`then` of a registered script's reply; then wait for the replicas (the script
        runs on a pipeline, so that the WAIT follows on its connection). `then` runs
        whether they acknowledged or not: what the write did is done on the primary."""
        if not self.enabled:
            return then(script(keys=keys, args=args))
        pipe = AckedPipeline(self, client.connection_pool, client.response_callbacks,
                             False, None)
        with pipe:
            script(keys=keys, args=args, client=pipe)
            [reply] = pipe.execute(check=False)
        value = then(reply)
        self.check(pipe.acked)
        return value


def _packed(connection: Any, acks: ReplicaAcks) -> list[bytes]:
    return list(connection.pack_command(*acks.wait_args()))


class _Appending:
    """A connection whose next packed write carries the WAIT after the pipeline's own."""

    def __init__(self, connection: Any, wait: list[bytes]) -> None:
        self._connection = connection
        self._wait: list[bytes] | None = wait

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._connection.send_packed_command(self._with_wait(command), check_health)

    def _with_wait(self, command: Any) -> Any:
        if self._wait is None:
            return command
        parts = [command] if isinstance(command, bytes | str) else list(command)
        parts, self._wait = [*parts, *self._wait], None
        return parts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class _AsyncAppending(_Appending):
    async def send_packed_command(  # type: ignore[override]
        self, command: Any, check_health: bool = True
    ) -> None:
        await self._connection.send_packed_command(self._with_wait(command), check_health)


class AckedPipeline(redis.client.Pipeline):
    """A sync pipeline followed, in its round trip, by WAIT (see the module's docstring)."""

    def __init__(self, acks: ReplicaAcks, *args: Any) -> None:
        super().__init__(*args)
        self.acks = acks
        self.acked: int | None = None

    def execute(self, raise_on_error: bool = True, check: bool = True) -> list[Any]:
        """The replies; ReplicaAckError if too few replicas acknowledged (unless not
        `check`: then `acked` says how many did)."""
        if not self.command_stack:  # nothing written, nothing to wait for
            return []
        self.acked = None
        replies = super().execute(raise_on_error)
        if check:
            self.acks.check(self.acked)
        return replies

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: Any) -> Any:
        return self._waiting(super()._execute_transaction, connection, commands, raise_on_error)

    def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: Any) -> Any:
        return self._waiting(super()._execute_pipeline, connection, commands, raise_on_error)

    def _waiting(self, run: Callable[..., Any], connection: Any, *args: Any) -> Any:
        try:
            replies = run(_Appending(connection, _packed(connection, self.acks)), *args)
        except BaseException:
            connection.disconnect()  # the WAIT's reply may be left unread on it
            raise
        try:
            self.acked = int(connection.read_response())
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()  # the write ran: not retried, but not acknowledged
        return replies


class AsyncAckedPipeline(redis.asyncio.client.Pipeline):
    """AckedPipeline for an asyncio client."""

    def __init__(self, acks: ReplicaAcks, *args: Any) -> None:
        super().__init__(*args)
        self.acks = acks
        self.acked: int | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self.command_stack:
            return []
        self.acked = None
        replies = await super().execute(raise_on_error)
        self.acks.check(self.acked)
        return replies

    async def _execute_transaction(
        self, connection: Any, commands: Any, raise_on_error: Any
    ) -> Any:
        return await self._waiting(super()._execute_transaction, connection, commands,
                                   raise_on_error)

    async def _execute_pipeline(
        self, connection: Any, commands: Any, raise_on_error: Any
    ) -> Any:
        return await self._waiting(super()._execute_pipeline, connection, commands,
                                   raise_on_error)

    async def _waiting(self, run: Callable[..., Any], connection: Any, *args: Any) -> Any:
        try:
            replies = await run(_AsyncAppending(connection, _packed(connection, self.acks)),
                                *args)
        except BaseException:
            await connection.disconnect()
            raise
        try:
            self.acked = int(await connection.read_response())
        except (redis.ConnectionError, redis.TimeoutError):
            await connection.disconnect()
        return replies
