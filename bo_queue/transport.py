"""kombu's Redis transport, with two repairs for a worker whose connection to Redis drops.
Workers consume through it (workers.security picks it); producers and Flower need not.

When the broker connection drops, Celery 5.7 closes it and kombu then tries to put the
worker's unacknowledged messages back on their queues through that closed connection;
the AttributeError (or, with Redis still down, the ConnectionError) that follows is an
"unrecoverable error" that stops the whole worker. Nothing is lost by not restoring
them then: they are still in Redis's unacked index, and the visibility-timeout sweep of
any worker puts them back. So this QoS logs and leaves them there. It also never puts
back the message of a task this worker is still running (see restore_unacked).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.worker import state as worker_state
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
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


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
