"""Messages Redis lost: kept next to their task until a worker starts it, and sent again
after Redis comes back.

kombu's Redis transport takes a message with BRPOP and only then records it as
unacknowledged. Redis going down in between (a crash, even a restart) can leave its AOF
with the pop done and no worker holding the message: the task would stay QUEUED for
ever. So every message sent is also written to `{ns}:outbox` (in the submit's own
pipeline), and the entry goes away when the task leaves the queue (bo_queue.events'
set_state). When a worker sees that Redis restarted (its `run_id` changed), one worker
(under a lock) looks for outbox entries whose task is still QUEUED but whose message is
nowhere: in no queue list, not unacknowledged, not held; it sends those again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis

from bo_queue.keys import Keys

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis, self.keys = client, keys
        self._run_id: str | None = None

    def keep(self, pipe: Any, task_id: str, message: dict[str, Any]) -> None:
        pipe.hset(self.keys.outbox, task_id, json.dumps(message))

    def restarted(self) -> str | None:
        """Redis's new run_id if it restarted since a worker last looked (the last run_id
        seen is kept in Redis, so a worker started after the restart notices too)."""
        run_id = str(self.redis.info("server").get("run_id", ""))
        if run_id == self._run_id:
            return None
        before = self.redis.set(f"{self.keys.outbox}:run_id", run_id, get=True)
        self._run_id = run_id
        return run_id if before is not None and before != run_id else None

    def reconcile(self, send: Callable[[str, dict[str, Any]], None],
                  queues: Iterable[str], run_id: str) -> list[str]:
        """Send again the messages Redis lost (once per restart, by one worker)."""
        if not self.redis.set(f"{self.keys.outbox}:reconciled:{run_id}", 1, nx=True, ex=3600):
            return []
        kept: dict[str, str] = self.redis.hgetall(self.keys.outbox)  # type: ignore[assignment]
        if not kept:
            return []
        present = self._present(queues)
        ids = [i for i in kept if i not in present]
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self.keys.task(task_id), "state")
            states = pipe.execute()
        resent = []
        for task_id, state in zip(ids, states, strict=True):
            if state != "QUEUED":  # gone, started, or ended: nothing to send
                self.redis.hdel(self.keys.outbox, task_id)
                continue
            send(task_id, json.loads(kept[task_id]))
            resent.append(task_id)
        if resent:
            log.warning("Redis restarted and had lost %d message(s); sent them again: %s",
                        len(resent), ", ".join(resent[:20]))
        return resent

    def _present(self, queues: Iterable[str]) -> set[str]:
        """Task ids whose message is in a queue list, unacknowledged or held."""
        prefix = self.keys.broker_prefix
        lists = [prefix + q + (f":{p}" if p else "") for q in queues for p in range(10)]
        with self.redis.pipeline(transaction=False) as pipe:
            for key in lists:
                pipe.lrange(key, 0, -1)
            pipe.hvals(prefix + "unacked")
            pipe.hkeys(f"{self.keys.delayed}:specs")
            replies = pipe.execute()
        present = set(replies[-1])
        for raw in [m for reply in replies[:-2] for m in reply] + list(replies[-2]):
            try:
                envelope = json.loads(raw)
                if isinstance(envelope, list):  # unacked: [message, exchange, routing key]
                    envelope = envelope[0]
                present.add(str(envelope["headers"]["id"]))
            except (ValueError, KeyError, TypeError, IndexError):
                continue
        return present
