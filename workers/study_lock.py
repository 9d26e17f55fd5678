"""A study's lock: one step at a time, on a lease that a thread renews while the step
runs.

A step killed with its process (`kill -9`, the OOM killer) stops renewing, so its lock
lapses within its lease and the next step carries on: before, the lease was the longest a
step may take (1.5 x the generation time limit + 15 s, 195 s by default), and a killed
step held its study for all of it. The lease is as long as a worker rides out a Redis
outage (`worker_outage_s`, 60 s by default: `lease_for`), so that no outage a step lives
through lets a second step into its study meanwhile. A live step keeps the lock for
`hold_s` after it last said it is alive (`keep`, between generations), as long as before,
and no longer; once its renewals have failed for a lease, `keep` says it lost the lock.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from redis.exceptions import LockError, RedisError

log = logging.getLogger(__name__)

MIN_LEASE_S = 3.0
# How often a suggest()'s step waiting for the lock looks: redis-py's default, 0.1 s, added
# 50 ms to the average suggest() that found a report's step at work.
POLL_S = 0.01


def lease_for(outage_s: float) -> float:
    """The lease of a step's lock: its worker's `worker_outage_s`, at least MIN_LEASE_S."""
    return max(MIN_LEASE_S, outage_s)


class LockLost(Exception):
    """The lock lapsed while the step held it: another step may have the study."""


class StudyLock:
    def __init__(self, client: redis.Redis, key: str, hold_s: float, lease_s: float) -> None:
        # thread_local=False: the renewing thread needs the token the step took
        self._lock = client.lock(key, timeout=lease_s, sleep=POLL_S, thread_local=False)
        self.key, self.hold_s, self.lease_s = key, hold_s, lease_s
        self._until = 0.0  # the step's bound: past it, the renewer gives the lock up
        self._renewed = 0.0  # when the lease last counted from
        self._lost = threading.Event()
        self._guard = threading.Lock()  # keep() and the renewer's verdict, one at a time
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, blocking: bool) -> bool:
        """Take the lock (waiting up to `hold_s` if blocking); renewed from then on."""
        taken = (self._lock.acquire(blocking=True, blocking_timeout=self.hold_s) if blocking
                 else self._lock.acquire(blocking=False))
        if taken:
            self._lost.clear()
            self._stop.clear()
            self._renewed = time.monotonic()
            self._until = self._renewed + self.hold_s
            self._renewer = threading.Thread(target=self._renew, daemon=True,
                                             name=f"lock {self.key}")
            self._renewer.start()
        return bool(taken)

    @property
    def fence(self) -> tuple[str, str]:
        """The key and this holder's token: what a write checks it still holds
        (RedisStorage.save_step), since a lock can lapse between `keep()` and a write."""
        token = self._lock.local.token
        return self.key, token.decode() if isinstance(token, bytes) else str(token)

    def keep(self) -> None:
        """The step is alive: hold the lock `hold_s` more; LockLost if it lapsed, or may
        have (no renewal reached Redis for a lease)."""
        with self._guard:
            now = time.monotonic()
            if self._lost.is_set() or now - self._renewed >= self.lease_s:
                self._lost.set()
                raise LockLost(self.key)
            self._until = now + self.hold_s

    def release(self) -> None:
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
        try:
            self._lock.release()
        except LockError:
            log.warning("the lock %s lapsed during a step", self.key)
        except RedisError as exc:  # Redis gone: the lock lapses with its lease
            log.warning("releasing %s: %s", self.key, exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._guard:
                if time.monotonic() >= self._until:  # past its bound: it gives the study up
                    self._lost.set()
                    return
            asked = time.monotonic()
            try:
                self._lock.reacquire()  # the lease counts from (before) now again
            except LockError:  # it lapsed (Redis lost it, or the process stalled)
                self._lost.set()
                return
            except (RedisError, OSError) as exc:  # not reached: the lease runs on
                log.warning("renewing %s: %s", self.key, exc)
            else:
                self._renewed = asked
