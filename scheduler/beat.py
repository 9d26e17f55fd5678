"""The beat scheduler: celery-redbeat's, with entries that keep a cron's time zone, and a
loop that outlives a short Redis outage (a Sentinel failover, a restart), at its start too."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any

import redis
from redbeat import RedBeatScheduler  # type: ignore[import-untyped]
from redbeat.schedulers import acquire_distributed_beat_lock  # type: ignore[import-untyped]

from bo_queue.schedules import entry_class

log = logging.getLogger(__name__)

OUTAGE_RETRY_S = 1.0


class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    Entry = entry_class()

    def setup_schedule(self) -> None:
        # Beat may start while Redis is down or failing over (a compose file may start it
        # first): redbeat reads Redis here, in the constructor, and an error ended beat.
        # Wait for Redis instead, as a worker waits for its broker.
        while True:
            try:
                super().setup_schedule()
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("beat: Redis unavailable at start (%s); trying again in %gs", exc,
                            OUTAGE_RETRY_S)
                time.sleep(OUTAGE_RETRY_S)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        # redbeat lets a connection error end beat (its lock's extend is not retried).
        # Beat keeps its lock token and tries again in a second instead: the lock lives
        # redbeat_lock_timeout (10 s), longer than a failover, so the same beat goes on
        # firing from the new master. Replication is asynchronous, so the new master may
        # not have the lock at all: then this beat takes it again at once. Only when
        # another beat holds it does the extend's LockNotOwnedError end this one.
        try:
            if self.lock is None and self.lock_key:  # Redis was down when beat took it
                acquire_distributed_beat_lock(SimpleNamespace(scheduler=self))
            try:
                interval: float = super().tick(*args, **kwargs)
            except redis.exceptions.LockNotOwnedError:
                if self.lock is None or not self.lock.acquire(blocking=False):
                    raise
                log.warning("beat: the lock was gone (lost with a failed master?); "
                            "taken again")
                return 0.0
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: Redis unavailable (%s); trying again in %gs", exc,
                        OUTAGE_RETRY_S)
            return OUTAGE_RETRY_S
        return interval
