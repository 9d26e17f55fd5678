"""Messages that got lost between Redis and a worker: kept next to their task until a
worker starts it, and sent again when a loss is suspected.

kombu's Redis transport takes a message with BRPOP and only then records it as
unacknowledged. Whatever ends in between loses the message, and the task stays QUEUED
for ever: Redis going down (its AOF has the pop, no worker got the message), or the
worker being `kill -9`ed right after the pop. So every message sent is also written to
`{ns}:outbox` (in the submit's own pipeline), and the entry goes away when the task leaves
the queue (bo_queue.core.events' set_state).

Workers raise a suspicion (`suspect`) when Redis restarted (its `run_id` changed) or when
a worker stopped without a warm shutdown (its heartbeat went stale, or it came back under
the same name while its old card was still there). Then one worker (under a lock) takes
two atomic snapshots of where messages are, a moment apart, and sends again the messages
of tasks still QUEUED that were in neither: in no queue list, not unacknowledged, not
held. Two snapshots, because a live worker's message is also nowhere for the instant
between its pop and its unacked record.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis

from bo_queue.core import scripts
from bo_queue.core.keys import Keys
from bo_queue.core.message import Message, envelope_task_id
from bo_queue.errors import ValidationError

log = logging.getLogger(__name__)

SETTLE_S = 1.0  # between the two snapshots: far longer than a pop-to-unacked instant


class Outbox:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis, self.keys = client, keys
        self._run_id: str | None = None
        self.suspicion_key = f"{keys.outbox}:suspect"
        self._clear = scripts.register(client, "outbox_clear.lua")

    def keep(self, pipe: Any, task_id: str, message: Message) -> None:
        pipe.hset(self.keys.outbox, task_id, message.encode())

    def suspect(self, reason: str) -> None:
        """Messages may have been lost: the next reconcile (any worker's) looks."""
        self.redis.set(self.suspicion_key, f"{reason} ({uuid.uuid4().hex[:8]})")

    def restarted(self) -> str | None:
        """Redis's new run_id if it restarted since a worker last looked (the last run_id
        seen is kept in Redis, so a worker started after the restart notices too)."""
        run_id = str(self.redis.info("server").get("run_id", ""))
        if run_id == self._run_id:
            return None
        before = self.redis.set(f"{self.keys.outbox}:run_id", run_id, get=True)
        self._run_id = run_id
        return run_id if before is not None and before != run_id else None

    def reconcile(self, send: Callable[[str, Message], None],
                  queues: Callable[[], Iterable[str]], settle_s: float = SETTLE_S) -> list[str]:
        """If a loss is suspected, send again the messages that are nowhere (one worker at
        a time; the suspicion is cleared once it has looked). `queues()` names the queues
        to look in; it is called only then."""
        reason = self.redis.get(self.suspicion_key)
        if reason is None:
            return []
        lock = f"{self.keys.outbox}:reconciling"
        if not self.redis.set(lock, 1, nx=True, ex=max(30, int(4 * settle_s))):
            return []
        try:
            names = list(queues())
            missing = self._queued(self._nowhere(names))
            if missing:
                time.sleep(settle_s)
                missing = self._queued(set(missing) & self._nowhere(names))
            kept: list[Any] = self.redis.hmget(self.keys.outbox, missing) if missing else []
            resent = []
            for task_id, raw in zip(missing, kept, strict=True):
                if raw is None:
                    continue
                try:
                    message = Message.decode(raw)
                except ValidationError as exc:  # it can never be sent: drop it, say so
                    log.error("dropped the outbox entry of task %s: %s", task_id, exc)
                    self.redis.hdel(self.keys.outbox, task_id)
                    continue
                send(task_id, message)
                resent.append(task_id)
            if resent:
                log.warning("%s: %d message(s) were lost; sent them again: %s", reason,
                            len(resent), ", ".join(resent[:20]))
            self._clear(keys=[self.suspicion_key], args=[str(reason)])
            return resent
        finally:
            self.redis.delete(lock)

    def _queued(self, ids: set[str]) -> list[str]:
        """Those of `ids` still QUEUED; the outbox entries of the others go (their task
        started, ended or expired)."""
        ordered = sorted(ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ordered:
                pipe.hget(self.keys.task(task_id), "state")
            states = pipe.execute()
        done = [i for i, state in zip(ordered, states, strict=True) if state != "QUEUED"]
        if done:
            self.redis.hdel(self.keys.outbox, *done)
        return [i for i, state in zip(ordered, states, strict=True) if state == "QUEUED"]

    def _nowhere(self, queues: list[str]) -> set[str]:
        """Outbox task ids whose message is in no queue list, not unacknowledged, not
        held and not held back by a paused queue, in one atomic snapshot (MULTI): a
        message moving from one to another between separate reads would look lost."""
        prefix = self.keys.broker_prefix
        lists = [prefix + q + (f":{p}" if p else "") for q in queues for p in range(10)]
        bases = list(dict.fromkeys(q.split(".")[0] for q in queues))  # default.gpu: default
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hkeys(self.keys.outbox)
            for key in lists:
                pipe.lrange(key, 0, -1)
            pipe.hvals(prefix + "unacked")
            pipe.hkeys(self.keys.delayed_specs)
            # held back by a worker while their queue is paused (bq.pause_queue): QUEUED, kept
            for base in bases:
                pipe.hkeys(self.keys.queue_held(base))
            replies = pipe.execute()
        held, replies = replies[len(replies) - len(bases):], replies[:len(replies) - len(bases)]
        kept, present = set(replies[0]), set(replies[-1])
        present.update(i for ids in held for i in ids)
        for raw in [m for reply in replies[1:-2] for m in reply] + list(replies[-2]):
            task_id = envelope_task_id(raw)
            if task_id is not None:
                present.add(task_id)
        return kept - present
