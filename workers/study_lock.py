"""A study's lock: one step at a time, on a short lease that a thread renews while the
step runs.

A step killed with its process (`kill -9`, the OOM killer) stops renewing, so its lock
lapses within LEASE_S and the next step carries on: before, the lock's lease was the
longest a step may take (1.5 x the generation time limit + 15 s, 195 s by default), and a
killed step held its study for all of it. A live step keeps the lock for `hold_s` after it
last said it is alive (`keep`, between generations), as long as before, and no longer.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from redis.exceptions import LockError, RedisError

log = logging.getLogger(__name__)

LEASE_S = 15.0  # the most a killed step's lock outlives it
# How often a suggest()'s step waiting for the lock looks: redis-py's default, 0.1 s, added
# 50 ms to the average suggest() that found a report's step at work.
POLL_S = 0.01


class LockLost(Exception):
    """The lock lapsed while the step held it: another step may have the study."""


class StudyLock:
    def __init__(self, client: redis.Redis, key: str, hold_s: float,
                 lease_s: float = LEASE_S) -> None:
        # thread_local=False: the renewing thread needs the token the step took
        self._lock = client.lock(key, timeout=lease_s, sleep=POLL_S, thread_local=False)
        self.key, self.hold_s, self.lease_s = key, hold_s, lease_s
        self._until = 0.0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, blocking: bool) -> bool:
        """Take the lock (waiting up to `hold_s` if blocking); renewed from then on."""
        taken = (self._lock.acquire(blocking=True, blocking_timeout=self.hold_s) if blocking
                 else self._lock.acquire(blocking=False))
        if taken:
            self._lost.clear()
            self._stop.clear()
            self._until = time.monotonic() + self.hold_s
            self._renewer = threading.Thread(target=self._renew, daemon=True,
                                             name=f"lock {self.key}")
            self._renewer.start()
        return bool(taken)

    def keep(self) -> None:
        """The step is alive: hold the lock `hold_s` more; LockLost if it lapsed."""
        if self._lost.is_set():
            raise LockLost(self.key)
        self._until = time.monotonic() + self.hold_s

    def release(self) -> None:
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
        try:
            self._lock.release()
        except LockError:
            log.warning("the lock %s lapsed during a step", self.key)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            if time.monotonic() >= self._until:  # a step past its bound gives the study up
                self._lost.set()
                return
            try:
                self._lock.reacquire()  # the lease counts from now again
            except LockError:  # it lapsed (Redis lost it, or the process stalled)
                self._lost.set()
                return
            except RedisError as exc:  # not reached this time: the lease runs on
                log.warning("renewing %s: %s", self.key, exc)
