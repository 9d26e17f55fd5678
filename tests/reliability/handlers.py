"""Handlers the reliability suite's workers import (`--import tests.reliability.handlers`).

`r.effect` is written the way the README asks handlers to be written under at-least-once
delivery: its effect (a counter) is applied at most once per task, guarded by an
idempotency record keyed by the task id, in one atomic script. The suite counts runs
and effects separately: runs may exceed tasks after a fault, effects may not.
"""

from __future__ import annotations

import json
import os
import signal
import time
from functools import cache
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bo_queue import TaskContext, handler

# KEYS: idempotency record, effect counter. ARGV: task id.
APPLY_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return redis.call('INCR', KEYS[2]) end
return 0
"""


@cache
def evidence() -> redis.Redis:
    # Written like the worker's own client: it waits out a Redis outage (the suite
    # restarts Redis mid-run) instead of failing the task.
    return redis.Redis.from_url(
        os.environ.get("RELIABILITY_EVIDENCE_URL") or os.environ["BO_QUEUE_REDIS_URL"],
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=90),
    )


def effect_keys(namespace: str) -> tuple[str, str, str]:
    """(idempotency-record prefix, effect counter, run counter) of one namespace."""
    return f"rel:{namespace}:done:", f"rel:{namespace}:effects", f"rel:{namespace}:runs"


@handler("r.effect")
def effect(payload: dict[str, Any], ctx: TaskContext) -> int:
    done, effects, runs = effect_keys(os.environ["BO_QUEUE_NAMESPACE"])
    evidence().incr(runs)
    time.sleep(float(payload.get("ms", 0)) / 1000)
    evidence().eval(APPLY_ONCE, 2, done + ctx.task_id, effects, ctx.task_id)
    return int(payload.get("i", 0))


@handler("r.poison")
def poison(payload: dict[str, Any], ctx: TaskContext) -> None:
    """Kills the worker process running it, every time: a segfault, an OOM kill."""
    evidence().incr(f"rel:{os.environ['BO_QUEUE_NAMESPACE']}:poison-runs")
    os.kill(os.getpid(), signal.SIGKILL)


@handler("r.interval")
def interval(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Sleeps, and appends when it ran to a file: evidence that needs no Redis (the
    partition test cuts this worker off from it)."""
    started = time.time()
    time.sleep(float(payload["seconds"]))
    line = {"id": ctx.task_id, "start": started, "end": time.time(),
            "worker": os.environ.get("TEST_WORKER_NAME", "?"), "pid": os.getpid()}
    with open(payload["log"], "a") as out:
        out.write(json.dumps(line) + "\n")
    return ctx.task_id


@handler("r.bowl", queue="evaluate")
def bowl(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    params = payload["params"]
    return {"loss": sum((float(v) - 0.3) ** 2 for v in params.values())}


@handler("r.slow_bowl", queue="evaluate")
def slow_bowl(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """r.bowl that takes 3 s: long enough to kill its worker mid-evaluation."""
    time.sleep(3.0)
    return bowl(payload, ctx)


@handler("r.pulse")
def pulse(payload: dict[str, Any], ctx: TaskContext) -> None:
    """What a schedule fires in the failover test: one run counted per firing."""
    evidence().incr(f"rel:{os.environ['BO_QUEUE_NAMESPACE']}:pulses")
