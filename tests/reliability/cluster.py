"""Workers for the reliability suite: the handlers of tests/reliability/handlers.py, and
settings under which lost messages come back within seconds."""

from __future__ import annotations

import random

import redis

from tests.conftest import Cluster
from tests.reliability.handlers import effect_keys

HANDLERS = ("tests.reliability.handlers",)
# A short visibility timeout, a sweep every second: a lost message is back in ~10 s.
FAST_RECOVERY = {"visibility_timeout_s": "10", "hold_delays_over_s": "5", "restore_sweep_s": "1"}


def cluster_of(redis_url: str, workers: int, concurrency: int,
               queues: tuple[str, ...] = ("default",), evidence_url: str | None = None,
               **settings: str) -> Cluster:
    """A fresh namespace with `workers` started side by side; the handlers leave their
    evidence in Redis at `evidence_url` (default: the queue's own)."""
    cluster = Cluster(redis_url, f"rel{random.randrange(16**8):08x}",
                      {**FAST_RECOVERY, **settings}, queues=queues,
                      env={"RELIABILITY_EVIDENCE_URL": evidence_url or redis_url})
    cluster.start_workers(*({"concurrency": concurrency, "imports": HANDLERS}
                            for _ in range(workers)))
    return cluster


def effects_of(evidence: redis.Redis, namespace: str) -> tuple[int, int, int]:
    """(idempotency records, effects applied, runs) of a namespace's r.effect tasks."""
    done, effects, runs = effect_keys(namespace)
    records = sum(1 for _ in evidence.scan_iter(done + "*", count=1000))
    return records, int(evidence.get(effects) or 0), int(evidence.get(runs) or 0)
