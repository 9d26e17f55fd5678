"""Submissions held in Redis until they are due.

A Celery ETA task waits, unacknowledged, in a worker's memory; past the visibility
timeout the Redis transport hands it to a second worker as well. So a delay longer than
`hold_delays_over_s` (a long countdown, a far eta, a long retry backoff) is held here
instead: a sorted set of task ids scored by due time, and a hash of what to send. Any
worker (and beat) moves due ones to their queue; a claim is a lease, so a mover that
dies mid-way only delays the send, never loses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from bo_queue.core import scripts
from bo_queue.core.keys import Keys
from bo_queue.core.message import Message
from bo_queue.errors import ValidationError

log = logging.getLogger(__name__)

RELEASE_BATCH = 100  # held submissions one claim takes


class DelayedSubmissions:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.zset = keys.delayed
        self.specs = keys.delayed_specs
        self._claim = scripts.register(client, "delays_claim.lua")
        self._drop_sent = scripts.register(client, "delays_drop_sent.lua")

    def hold(self, pipe: Any, task_id: str, due_at: float, message: Message) -> None:
        pipe.hset(self.specs, task_id, message.encode())
        pipe.zadd(self.zset, {task_id: due_at})

    def drop(self, task_id: str) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            self.dropping(pipe, task_id)
            pipe.execute()

    def dropping(self, pipe: Any, task_id: str) -> None:
        """Queue `drop`'s commands on `pipe` (sync or asyncio)."""
        pipe.zrem(self.zset, task_id)
        pipe.hdel(self.specs, task_id)

    def pending(self) -> int:
        return int(self.redis.zcard(self.zset))

    def release_due(
        self, send: Callable[[str, Message], None], limit: int = RELEASE_BATCH,
        lease_s: float = 30,
    ) -> int:
        """Send every due submission; returns how many were sent."""
        reply = self._claim(keys=[self.zset, self.specs], args=[time.time(), limit, lease_s])
        sent = 0
        for task_id, spec in zip(reply[::2], reply[1::2], strict=True):
            try:
                message = Message.decode(spec)
            except ValidationError as exc:  # it can never be sent: drop it, say so
                log.error("dropped held task %s: %s", task_id, exc)
                self._drop_sent(keys=[self.zset, self.specs], args=[task_id, spec])
                continue
            try:
                send(task_id, message)
            except Exception:  # keep the lease: it is retried once the lease runs out
                log.exception("could not send held task %s; will retry", task_id)
                continue
            self._drop_sent(keys=[self.zset, self.specs], args=[task_id, spec])
            sent += 1
        return sent
