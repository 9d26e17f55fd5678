"""Handlers the integration tests' worker processes import (`--import tests.integration.handlers`).

They leave evidence in Redis (under `evidence:*` in the test server) so the tests can check
what really ran, how often, where and when.
"""

from __future__ import annotations

import os
import socket
import time
from functools import cache
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from bo_queue import Handler, RetryPolicy, TaskContext, handler, register


class TransientError(Exception):
    """Retryable by the policies below."""


@cache
def evidence() -> redis.Redis:
    # a plain Redis of its own for workers whose queue is on Sentinel (test_sentinel.py)
    url = os.environ.get("TEST_EVIDENCE_URL") or os.environ["BO_QUEUE_REDIS_URL"]
    return redis.Redis.from_url(url, decode_responses=True)


def _mark_run(ctx: TaskContext) -> None:
    evidence().hincrby("evidence:runs", ctx.task_id, 1)


@handler("t.echo")
def echo(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    _mark_run(ctx)
    return payload


@handler("t.record_order")
def record_order(payload: dict[str, Any], ctx: TaskContext) -> str:
    _mark_run(ctx)
    evidence().rpush(payload["list"], payload["label"])
    return str(payload["label"])


@handler("t.gate")
def gate(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Hold this worker process until the key `payload["key"]` exists."""
    evidence().set(payload["key"] + ":entered", 1)
    while not evidence().exists(payload["key"]):
        time.sleep(0.02)
    return "opened"


FLAKY = RetryPolicy(max_retries=3, backoff=0.4, backoff_max=10, jitter=False, on=(TransientError,))


@handler("t.flaky", retry=FLAKY)
def flaky(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    evidence().rpush(f"evidence:attempts:{ctx.task_id}", time.time())
    if ctx.attempt <= payload.get("fail_times", 0):
        raise TransientError(f"attempt {ctx.attempt} failed")
    if payload.get("fatal"):
        raise ValueError("not retryable")
    return {"attempt": ctx.attempt}


@register
class ClassEcho(Handler):
    """A class-based handler: retried as t.flaky is; its hooks run on the instance that ran
    the task, and say so in `evidence:hooks:<task id>`."""

    name = "t.class_echo"
    retry = RetryPolicy(max_retries=2, backoff=0.2, jitter=False, on=(TransientError,))

    def __init__(self) -> None:
        self.runs = 0  # this process's instance: counts every run it served
        self.last_task: str | None = None

    def run(self, payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        _mark_run(ctx)
        self.runs += 1
        self.last_task = ctx.task_id
        if ctx.attempt <= payload.get("fail_times", 0):
            raise TransientError(f"attempt {ctx.attempt} failed")
        return {"echo": payload.get("echo"), "attempt": ctx.attempt}

    def _log(self, ctx: TaskContext, kind: str) -> None:
        same = "same" if self.last_task == ctx.task_id else "other"
        evidence().rpush(f"evidence:hooks:{ctx.task_id}", f"{kind}:{same}")

    def on_success(self, ctx: TaskContext, result: Any) -> None:
        self._log(ctx, "success")

    def on_failure(self, ctx: TaskContext, error: BaseException) -> None:
        self._log(ctx, "failure")

    def on_retry(self, ctx: TaskContext, error: BaseException, delay_s: float) -> None:
        self._log(ctx, f"retry {delay_s:g}")


@handler("t.long_backoff", retry=RetryPolicy(max_retries=1, backoff=2.5, jitter=False))
def long_backoff(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    evidence().rpush(f"evidence:attempts:{ctx.task_id}", time.time())
    if ctx.attempt == 1:
        raise TransientError("first attempt fails")
    return {"attempt": ctx.attempt}


@handler("t.checkpointed", retry=RetryPolicy(max_retries=2, backoff=0.1, jitter=False))
def checkpointed(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    start = (ctx.last_checkpoint or {"step": 0})["step"]
    for step in range(start, 6):
        ctx.checkpoint({"step": step})
        if step == 3 and ctx.attempt == 1:
            raise TransientError("lost at step 3")
    return {"resumed_from": start, "attempt": ctx.attempt}


@handler("t.progress")
def progress(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    _mark_run(ctx)
    steps = payload.get("steps", 5)
    for step in range(steps):
        if ctx.cancelled:
            return {"stopped_at": step}
        time.sleep(payload.get("step_s", 0.3))
        ctx.progress((step + 1) / steps, f"step {step + 1}")
    return {"steps": steps}


@handler("t.sleep")
def sleep(payload: dict[str, Any], ctx: TaskContext) -> str:
    evidence().set(f"evidence:started:{ctx.task_id}", socket.gethostname())
    time.sleep(payload["seconds"])
    return "slept"


@handler("t.too_slow", time_limit=1)
def too_slow(payload: dict[str, Any], ctx: TaskContext) -> str:
    time.sleep(5)
    return "finished anyway"


@handler("t.survivor")
def survivor(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Announces which worker runs it, then works long enough for that worker to be killed."""
    _mark_run(ctx)
    evidence().rpush(f"evidence:survivor:{ctx.task_id}", os.environ.get("TEST_WORKER_NAME", "?"))
    time.sleep(payload.get("seconds", 3))
    return {"attempt": ctx.attempt}


@handler("t.bad_result")
def bad_result(payload: dict[str, Any], ctx: TaskContext) -> Any:
    return {1, 2, 3}


@handler("t.spawner")
def spawner(payload: dict[str, Any], ctx: TaskContext) -> list[str]:
    return [ctx.spawn("t.echo", {"child": i}).id for i in range(payload["children"])]


def _hook_log(kind: str) -> Any:
    def hook(ctx: TaskContext, value: Any, *extra: Any) -> None:
        evidence().rpush(f"evidence:hooks:{ctx.task_id}", kind)

    return hook


@handler(
    "t.hooked",
    retry=RetryPolicy(max_retries=1, backoff=0.1, jitter=False, on=(TransientError,)),
    on_success=_hook_log("success"), on_failure=_hook_log("failure"), on_retry=_hook_log("retry"),
)
def hooked(payload: dict[str, Any], ctx: TaskContext) -> str:
    if ctx.attempt == 1:
        raise TransientError("retry me")
    if payload.get("fail"):
        raise ValueError("fails for good")
    return "ok"


# -- evaluators for study tests (the evaluator contract: payload has study_id, trial_index,
#    params and options; the result maps each metric to a float or [mean, sem]) ----------


@handler("t.quadratic", queue="evaluate")
def quadratic(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    options = payload.get("options") or {}
    time.sleep(options.get("sleep_s", 0))
    evidence().hincrby(f"evidence:evaluations:{payload['study_id']}", str(payload["trial_index"]))
    if payload["trial_index"] in options.get("fail", []):
        raise ValueError(f"trial {payload['trial_index']} fails on purpose")
    if options.get("wrong_keys"):
        return {"nope": 1.0}
    params = payload["params"]
    numbers = [float(v) for v in params.values() if isinstance(v, int | float)]
    return {"loss": sum((v - 0.3) ** 2 for v in numbers)}


EVALUATION_RETRY = RetryPolicy(max_retries=2, backoff=0.1, jitter=False, on=(TransientError,))


@handler("t.retried_eval", queue="evaluate", retry=EVALUATION_RETRY)
def retried_eval(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """An evaluator whose first attempt fails and is retried (a Celery retry, which must
    keep the message's study marker)."""
    evidence().hincrby(f"evidence:evaluations:{payload['study_id']}", str(payload["trial_index"]))
    if ctx.attempt == 1:
        raise TransientError("the first attempt fails")
    return {"loss": sum((float(v) - 0.3) ** 2 for v in payload["params"].values())}


@handler("t.stuck_eval", queue="evaluate", time_limit=1)
def stuck_eval(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """An evaluator that ignores its soft time limit: the hard one (the limit plus the
    runner's grace) kills its process, and Celery ends it in the worker's main process."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue
    return {"loss": 0.0}


@handler("t.node")
def node(payload: dict[str, Any], ctx: TaskContext) -> int:
    """A task in a dependency graph: logs its start and end to `payload["log"]` (so a test
    can check the order), fails if asked, and returns its value plus its dependencies'."""
    _mark_run(ctx)
    log = payload["log"]
    evidence().rpush(log, f"start:{ctx.task_id}")
    if payload.get("fail"):
        raise ValueError(f"node {ctx.task_id} fails as asked")
    seen = ctx.dependency_results()
    evidence().rpush(log, f"end:{ctx.task_id}")
    return int(payload.get("value", 0)) + sum(int(v) for v in seen.values())


@handler("t.counter")
def counter(payload: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    """Counts its runs under `payload["key"]`: how many times a loop ran its body."""
    return {"n": int(evidence().incr(payload["key"]))}


@handler("t.bowl", queue="evaluate")
def bowl(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """An evaluator that needs only the parameters: sum of (v - 0.3)^2."""
    return {"loss": sum((float(v) - 0.3) ** 2 for v in payload["params"].values())}


@handler("t.logs")
def logs(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Logs through ctx.log (tests/integration/test_logs.py reads the worker's log)."""
    ctx.log.info("hello %s", payload["who"])
    return f"logged {payload['who']}"


@handler("t.fail_until_fixed")
def fail_until_fixed(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Fails (for good: no retry policy) until the key `payload["fixed"]` exists."""
    _mark_run(ctx)
    if payload.get("fixed") and not evidence().exists(payload["fixed"]):
        raise ValueError("not fixed yet")
    return "ok"
