"""Is the deployment healthy? `check_health(bq.monitor)` answers with one check per concern:

- redis: Redis answers PING within the connect timeout (if not, every other check
  fails with "redis unreachable");
- replication: who serves: on Sentinel, the master the sentinels name (it fails if
  none does) and its live replicas; on a plain Redis, its role and replicas (INFO);
- workers:QUEUE: at least one live worker (a heartbeat fresher than
  `heartbeat_timeout_s`) consumes each configured queue;
- beat: celery beat is running, i.e. celery-redbeat's lock key exists (the beat that
  holds it renews it every loop; it expires `redbeat_lock_timeout` s after beat stops);
- queue_age:QUEUE: no task in the queue has waited longer than `max_queue_age_s` (a
  paused queue's tasks wait on purpose: it passes, and says it is paused).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import redis
from pydantic import BaseModel

from bo_queue.core.connections import replication
from bo_queue.errors import BOQueueError

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core
    from bo_queue.monitor.manager import Monitor

UNREACHABLE = "redis unreachable"


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


class HealthReport(BaseModel):
    ok: bool
    checks: list[Check]

    def render(self) -> str:
        """One line per check: its name, "ok" or "FAIL", and what was found."""
        width = max((len(c.name) for c in self.checks), default=0)
        return "\n".join(
            f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL':<4}  {c.detail}".rstrip()
            for c in self.checks
        )


def beat_lock_key(bq: Core) -> str:
    """The key celery-redbeat's beat holds while it runs. redbeat names it
    `redbeat_lock_key`, by default its key prefix + ":lock"; bo_queue's prefix is
    `{ns}:redbeat:` (bo_queue.core.celery_app), so the lock is `{ns}:redbeat::lock`."""
    from redbeat.schedulers import ensure_conf  # type: ignore[import-untyped]

    return str(ensure_conf(bq.app).lock_key)


def check_health(
    monitor: Monitor, *, max_queue_age_s: float = 300.0, require_beat: bool = True
) -> HealthReport:
    bq = monitor.bq
    queues = list(bq.settings.queues)
    checks = [_check_redis(bq)]
    if not checks[0].ok:
        checks += [Check(f"workers:{q}", False, UNREACHABLE) for q in queues]
        if require_beat:
            checks.append(Check("beat", False, UNREACHABLE))
        checks += [Check(f"queue_age:{q}", False, UNREACHABLE) for q in queues]
        return HealthReport(ok=False, checks=checks)
    checks += _check_replication(bq)
    checks += _check_workers(monitor, queues)
    if require_beat:
        checks.append(_check_beat(bq))
    checks += _check_queue_ages(monitor, queues, max_queue_age_s)
    return HealthReport(ok=all(c.ok for c in checks), checks=checks)


def _check_redis(bq: Core) -> Check:
    limit = bq.settings.connect_timeout_s
    start = time.monotonic()
    try:
        bq.redis.ping()
    except (redis.RedisError, OSError) as exc:
        return Check("redis", False, f"{UNREACHABLE}: {exc}")
    took = time.monotonic() - start
    if took > limit:
        return Check("redis", False, f"PING took {took:.1f}s, over the {limit:g}s timeout")
    return Check("redis", True, f"PING {took * 1000:.1f}ms")


def _check_replication(bq: Core) -> list[Check]:
    """One check, or none for a plain Redis that refuses INFO."""
    try:
        found = replication(bq.settings, bq.redis)
    except (redis.RedisError, OSError) as exc:  # MasterNotFoundError included
        if isinstance(exc, redis.ResponseError) and not bq.settings.on_sentinel:
            return []
        return [Check("replication", False, f"no master: {exc}")]
    return [Check("replication", True, found.describe())]


def _check_workers(monitor: Monitor, queues: list[str]) -> list[Check]:
    try:
        workers = monitor.workers()
    except (BOQueueError, redis.RedisError) as exc:
        return [Check(f"workers:{q}", False, f"{UNREACHABLE}: {exc}") for q in queues]
    out = []
    for queue in queues:
        names = [w.hostname for w in workers if queue in w.queues]
        if names:
            count = f"{len(names)} live worker{'s' if len(names) > 1 else ''}"
            out.append(Check(f"workers:{queue}", True, f"{count}: {', '.join(names)}"))
        else:
            out.append(Check(f"workers:{queue}", False,
                             f"no live worker consumes {queue!r} ({len(workers)} live in all)"))
    return out


def _check_beat(bq: Core) -> Check:
    key = beat_lock_key(bq)
    try:
        ttl_ms = int(bq.redis.pttl(key))  # -2: no such key, -1: no expiry
    except (redis.RedisError, OSError) as exc:
        return Check("beat", False, f"{UNREACHABLE}: {exc}")
    if ttl_ms == -2:
        return Check("beat", False, f"no beat holds the lock {key}")
    expiry = f", expires in {ttl_ms / 1000:.1f}s" if ttl_ms >= 0 else ""
    return Check("beat", True, f"lock {key} held{expiry}")


def _check_queue_ages(monitor: Monitor, queues: list[str], max_age_s: float) -> list[Check]:
    try:
        stats = monitor.queues()
    except (BOQueueError, redis.RedisError) as exc:
        return [Check(f"queue_age:{q}", False, f"{UNREACHABLE}: {exc}") for q in queues]
    out = []
    for queue in queues:
        cells = [s for s in stats if s.queue == queue]
        waiting = sum(s.length for s in cells)
        if any(s.paused for s in cells):  # its tasks wait on purpose (bq.pause_queue)
            held = sum(s.held for s in cells)
            out.append(Check(f"queue_age:{queue}", True,
                             f"paused, {waiting} waiting, {held} held back"))
            continue
        aged = [s for s in cells if s.oldest_age_s is not None]
        if not aged:
            out.append(Check(f"queue_age:{queue}", True,
                             "empty" if not waiting else f"{waiting} waiting, age unknown"))
            continue
        oldest = max(aged, key=lambda s: s.oldest_age_s or 0.0)
        age = oldest.oldest_age_s or 0.0
        detail = (f"{waiting} waiting, oldest {age:.0f}s ({oldest.priority.name.lower()}), "
                  f"limit {max_age_s:g}s")
        out.append(Check(f"queue_age:{queue}", age <= max_age_s, detail))
    return out
