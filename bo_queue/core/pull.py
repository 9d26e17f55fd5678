"""The queue side of pull mode: a pull task type's message, sent like any other
(Core.send), waits here, per type and best first, until an agent claims it. Types, agents,
claims, leases and completion are the agents service's (bo_queue.agents); the scripts of
both share lua/pull.lua.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from bo_queue.core import scripts
from bo_queue.core.keys import Keys
from bo_queue.core.message import Message
from bo_queue.states import Priority


class PullQueue:
    """Where pull tasks wait for agents. `clock` is what "now" is in every pull script,
    here and in bo_queue.agents (tests move it)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float, events_max_len: int):
        self.keys = keys
        self.ttl_s = ttl_s  # a record's retention once its task ends
        self.clock: Callable[[], float] = time.time
        self._offer = scripts.register(client, "agents_offer.lua", MAX_EVENTS=events_max_len)

    def offer(self, task_id: str, message: Message) -> bool:
        """Make a task claimable. False if it has ended (cancelled before its send) or
        was offered already."""
        priority = message.priority
        broker = Priority.NORMAL.broker_priority if priority is None else priority
        args: list[str | float] = [
            self.keys.namespace, self.clock(), self.ttl_s, task_id,
            message.handler, max(0, min(9, broker)), message.due_at or 0, message.encode(),
        ]
        return bool(self._offer(args=args))
