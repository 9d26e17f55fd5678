"""The beat scheduler: celery-redbeat's, with entries that keep a cron's time zone, and a
loop that outlives a short Redis outage (a Sentinel failover, a restart)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler  # type: ignore[import-untyped]

from bo_queue.schedules import entry_class

log = logging.getLogger(__name__)

OUTAGE_RETRY_S = 1.0


class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    Entry = entry_class()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        # redbeat lets a connection error end beat (its lock's extend is not retried).
        # Beat keeps its lock token and tries again in a second instead: the lock lives
        # redbeat_lock_timeout (10 s), longer than a failover, so the same beat goes on
        # firing from the new master; after a longer outage another beat may hold it,
        # and the extend's LockNotOwnedError ends this one as before.
        try:
            interval: float = super().tick(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: Redis unavailable (%s); trying again in %gs", exc,
                        OUTAGE_RETRY_S)
            return OUTAGE_RETRY_S
        return interval
