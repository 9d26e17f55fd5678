"""kombu's Redis transport, with two repairs for a worker whose connection to Redis drops,
and one client where kombu makes a new one per command. Workers consume through it
(workers.security picks it); producers and Flower need not.

When the broker connection drops, Celery 5.7 closes it and kombu then tries to put the
worker's unacknowledged messages back on their queues through that closed connection;
the AttributeError (or, with Redis still down, the ConnectionError) that follows is an
"unrecoverable error" that stops the whole worker. Nothing is lost by not restoring
them then: they are still in Redis's unacked index, and the visibility-timeout sweep of
any worker puts them back. So this QoS logs and leaves them there. It also never puts
back the message of a task this worker is still running (see restore_unacked), and
when such a task ends after the worker reconnected, it acknowledges the message through
a client of its own: kombu would use the closed channel, and the AttributeError stops
the worker just the same.

kombu builds a new `redis.Redis` for every command it sends outside a pipeline (each
acknowledgement, each Celery event published, each unacked-index update), and redis-py
fills some 170 response callbacks into each: measured, about a fifth of a busy worker's
main-process CPU. A client holds no connection of its own (the pool does), so one per
pool does the same work (`OneClient`).

`held_tags()` names the delivery tags a worker holds, for its heartbeat card: a live
worker puts back the unacknowledged messages of a dead one at once (bo_queue.core.heartbeats)
and must never take those of a live one.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.sentinel
from celery.worker import state as worker_state
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger(__name__)


_channels: weakref.WeakSet[QoS] = weakref.WeakSet()  # every QoS of this process


def held_tags() -> list[str]:
    """The delivery tags of every message this worker holds unacknowledged: delivered to
    a channel (prefetched, eta, running) or kept by a running task across a reconnect."""
    tags = {str(tag) for qos in list(_channels) for tag in qos.delivered()}
    requests = [*worker_state.reserved_requests, *worker_state.active_requests]
    tags.update(str(r.message.delivery_tag) for r in requests
                if getattr(r.message, "delivery_tag", None))
    return sorted(tags)


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _channels.add(self)

    def delivered(self) -> list[str]:
        """The tags delivered to this channel and not yet acknowledged (or just)."""
        return list(self._delivered or ())

    def restore_unacked(self, client: Any = None) -> Any:
        # A task still running keeps its message in the unacked set: putting it back now
        # (the connection dropped, Redis is still there) would have a second worker run
        # it beside this one. If this run ends, its record says so and a redelivery after
        # the visibility timeout is dropped; if this worker dies, that redelivery runs it.
        running = {request.id for request in worker_state.active_requests}
        held: dict[str, Any] = self._delivered or {}
        for tag, message in list(held.items()):
            headers = getattr(message, "headers", None) or {}
            if headers.get("id") in running:
                del held[tag]
        try:
            return super().restore_unacked(client)
        except (AttributeError, redis.RedisError, OSError) as exc:
            delivered = self._delivered
            log.warning(
                "could not put %d unacknowledged message(s) back on their queues (%r); "
                "they stay in Redis and return after the visibility timeout",
                len(delivered or ()), exc,
            )
            if delivered is not None:
                delivered.clear()
            return None

    def ack(self, delivery_tag: str) -> None:
        if self.channel.connection is not None:
            super().ack(delivery_tag)
            return
        self._ack_after_close(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self.channel.connection is not None:
            super().reject(delivery_tag, requeue)
            return
        if requeue:  # the visibility sweep puts it back: it is still in the unacked index
            virtual.QoS.ack(self, delivery_tag)
        else:
            self._ack_after_close(delivery_tag)

    def _ack_after_close(self, delivery_tag: str) -> None:
        """The message of a task that ran across a dropped connection: take it out of the
        unacked index through a client of its own. If Redis is still down it stays there,
        and the redelivery after the visibility timeout finds the task ended and is
        dropped; nothing runs twice either way."""
        channel: Any = self.channel
        qos: Any = self  # kombu's typing lacks its Redis QoS's helpers
        try:
            client = channel.client_after_close()
            try:
                # kombu's private index helper: tests/unit/test_adapters.py pins it
                qos._remove_from_indices(delivery_tag, client.pipeline()).execute()  # noqa: SLF001
            finally:
                client.connection_pool.disconnect()
        except (redis.RedisError, OSError) as exc:
            log.warning("could not acknowledge message %s after the connection dropped "
                        "(%r); it returns after the visibility timeout", delivery_tag, exc)
        virtual.QoS.ack(self, delivery_tag)


class OneClient:
    """kombu's Channel.conn_or_acquire, minus a new client each time: one client over the
    channel's pool, made again when kombu replaced the pool (a reconnect)."""

    _one_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        channel: Any = self  # mixed into kombu's Redis channels: their pool and factory
        pool = channel.pool
        if self._one_client is None or self._one_client.connection_pool is not pool:
            self._one_client = channel._create_client()  # noqa: SLF001
        yield self._one_client


class Channel(OneClient, kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # How to reach Redis once the connection is gone: by the time Celery closes this
        # channel, kombu has already dropped what _connparams reads.
        self._params_after_close: dict[str, Any] = self._connparams(  # type: ignore[attr-defined]
            asynchronous=False)

    def client_after_close(self) -> Any:
        pool = redis.ConnectionPool(**self._params_after_close)
        return self.Client(connection_pool=pool)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(OneClient, kombu_redis.SentinelChannel):
    """The same repairs on Sentinel: after the close, a client on the master the
    sentinels name now (kombu's own would reach the address of the old one)."""

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        alternates: list[str] = self.connection.client.alt  # type: ignore[union-attr]
        self._sentinels: list[tuple[str, int]] = [
            (url.hostname, url.port or 26379) for url in map(urlsplit, alternates)
            if url.scheme == "sentinel" and url.hostname
        ]
        self._master_params: dict[str, Any] = {
            k: v for k, v in self._connparams(asynchronous=False).items()  # type: ignore[attr-defined]
            if k not in ("host", "port", "connection_class")
        }

    def client_after_close(self) -> Any:
        found = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            self._sentinels, sentinel_kwargs=getattr(self, "sentinel_kwargs", None))
        return found.master_for(  # type: ignore[no-untyped-call]
            getattr(self, "master_name", None), redis_class=redis.Redis, **self._master_params)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
