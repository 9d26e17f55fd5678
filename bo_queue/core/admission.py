"""Admission: whether a worker may start a task now.

Three gates, each a Lua script on Redis so that every worker sees the same numbers:

- a handler's `max_concurrency`: at most N runs at once across every worker;
- a handler's `rate_limit` ("10/s"): at most N starts per period across every worker
  (Celery's own `rate_limit` is per worker);
- the worker's resources: what the task needs (cpu, memory_mb, gpu) must fit in what the
  worker offers minus what its running tasks hold.

Concurrency slots and resources are held under a lease that the running worker renews
(`LeaseKeeper`); a worker that dies stops renewing, so what it held comes back after the
lease. A task that does not get in is not run: the runner holds it back in Redis and
sends it again when it may get in (bo_queue.core.delays), without counting an attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from bo_queue.core import scripts
from bo_queue.core.keys import Keys
from bo_queue.registry import Resources, parse_rate

log = logging.getLogger(__name__)

@dataclass
class Admission:
    """What one run holds once admitted (release it when the run ends)."""

    holder: str
    pools: list[tuple[str, str]] = field(default_factory=list)  # (holders key, needs key)
    needs: list[list[float]] = field(default_factory=list)  # what it holds in each pool


class Gate:
    """The three gates for one worker (its hostname names its resource pool)."""

    def __init__(self, client: redis.Redis, keys: Keys, worker: str, offers: Resources,
                 lease_s: float) -> None:
        self.client, self.keys, self.worker = client, keys, worker
        self.offers, self.lease_s = offers, lease_s
        self._reserve = scripts.register(client, "admission_reserve.lua")
        self._rate = scripts.register(client, "admission_rate.lua")
        self._renew = scripts.register(client, "admission_renew.lua")
        self.keeper = LeaseKeeper(self)

    def admit(self, task_id: str, handler: str, max_concurrency: int | None,
              rate_limit: str | None, needs: Resources | None) -> Admission | float:
        """The task may start (what it holds), or how many seconds to wait first."""
        now = time.time()
        admission = Admission(task_id)
        pools: list[tuple[tuple[str, str], list[float], list[float]]] = []
        if max_concurrency is not None:
            pools.append((self.keys.slots(handler), [max_concurrency], [1]))
        if needs is not None and (needs.cpu or needs.memory_mb or needs.gpu):
            pools.append((self.keys.resources(self.worker),
                          [self.offers.cpu, self.offers.memory_mb, self.offers.gpu],
                          [needs.cpu, needs.memory_mb, needs.gpu]))
        expiry = now + self.lease_s
        for pool, capacity, need in pools:
            args: list[Any] = [now, expiry, task_id, len(capacity), *capacity, *need]
            if not int(self._reserve(keys=list(pool), args=args)):
                self.release(admission)
                return min(1.0, self.lease_s / 4)  # a run may end any moment: look again soon
            admission.pools.append(pool)
            admission.needs.append(need)
        # the rate last: a start is counted only for a run that is about to happen
        if rate_limit is not None:
            count, period = parse_rate(rate_limit)
            wait = float(self._rate(keys=[self.keys.rate(handler)],
                                    args=[period, count, task_id]))
            if wait > 0:
                self.release(admission)
                return wait
        if admission.pools:
            self.keeper.hold(admission)
        return admission

    def release(self, admission: Admission) -> None:
        self.keeper.drop(admission)
        if admission.pools:
            self.renew(admission, 0)

    def renew(self, admission: Admission, expiry: float) -> None:
        """Extend (or, with expiry 0, end) the holds of an admission until `expiry`."""
        keys = [key for pool in admission.pools for key in pool]
        held = [",".join(str(n) for n in need) for need in admission.needs]
        if int(self._renew(keys=keys, args=[admission.holder, expiry, *held])):
            log.warning("task %s: its hold on a limit or resources had lapsed (Redis was "
                        "away longer than limit_lease_s); taken again", admission.holder)


class LeaseKeeper:
    """One thread per worker process that renews the leases of what its runs hold, every
    third of the lease; it starts with the first admission (after a prefork fork)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._held: dict[str, Admission] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, admission: Admission) -> None:
        with self._lock:
            self._held[admission.holder] = admission
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="bo-queue-leases")
                self._thread.start()

    def drop(self, admission: Admission) -> None:
        with self._lock:
            self._held.pop(admission.holder, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.gate.lease_s / 3)
            with self._lock:
                held = list(self._held.values())
            for admission in held:
                try:
                    self.gate.renew(admission, time.time() + self.gate.lease_s)
                except redis.RedisError:
                    log.warning("could not renew the lease of task %s", admission.holder)
