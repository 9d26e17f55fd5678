"""Workers for the reliability suite: the handlers of tests/reliability/handlers.py, and
settings under which lost messages come back within seconds."""

from __future__ import annotations

import random
from collections import Counter

import redis

from bo_queue import BOQueue
from bo_queue.core.message import envelope_task_id
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


def task_states(bq: BOQueue, task_ids: list[str]) -> list[str | None]:
    """Each task's state as stored, in one round trip."""
    with bq.redis.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hget(bq.keys.task(task_id), "state")
        return list(pipe.execute())


def whereabouts(bq: BOQueue, task_ids: list[str]) -> str:
    """For a failure message: how many of `task_ids` are in each state, and where the
    messages of the unfinished ones are (a queue list, unacknowledged, held, the outbox)."""
    prefix = bq.keys.broker_prefix
    states = dict(zip(task_ids, task_states(bq, task_ids), strict=True))
    with bq.redis.pipeline(transaction=False) as pipe:
        for priority in range(10):
            pipe.lrange(f"{prefix}default" + (f":{priority}" if priority else ""), 0, -1)
        pipe.hvals(prefix + "unacked")
        pipe.hkeys(bq.keys.delayed_specs)
        pipe.hkeys(bq.keys.outbox)
        replies = pipe.execute()
    queued = {envelope_task_id(m) for reply in replies[:-3] for m in reply}
    unacked = {envelope_task_id(m) for m in replies[-3]}
    held, outbox = set(replies[-2]), set(replies[-1])
    places: Counter[str] = Counter()
    for task_id, state in states.items():
        if state == "SUCCEEDED":
            continue
        where = [name for name, ids in (("queued", queued), ("unacked", unacked),
                                        ("held", held), ("outbox", outbox)) if task_id in ids]
        places[f"{state}: {'+'.join(where) or 'no message anywhere'}"] += 1
    return (f"{Counter(states.values())}; unfinished: {dict(places)}; "
            f"e.g. {[t for t, s in states.items() if s != 'SUCCEEDED'][:3]}")
