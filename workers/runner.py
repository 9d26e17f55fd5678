"""How a worker runs a handler: every registered handler becomes a Celery task of the
same name whose body is `execute`.

Record writes that say a task has ended happen in the Task hooks and signals Celery
calls *after* it stored the result, so a worker lost in between leaves a record that
still says RUNNING (and the redelivered message runs again) rather than one that says
SUCCEEDED over a missing result. A failure ending has one writer, `record_failure`, which
the `task_failure` signal calls (workers.lifecycle): Celery sends it for every failure,
also those that never reach `HandlerTask.on_failure` (a rejected message, a pool error).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import pydantic
from celery import Celery, Task, states
from celery.app.task import Context
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded
from celery.worker.request import Request

from bo_queue import registry
from bo_queue.client import BOQueue
from bo_queue.context import TaskContext
from bo_queue.core.admission import Gate
from bo_queue.core.celery_app import ResultBackend
from bo_queue.core.message import HARD_LIMIT_GRACE_S, Message, evaluation_of
from bo_queue.errors import (
    ConfigurationError,
    InvalidResultError,
    ReplicaAckError,
    TaskCancelledError,
    TaskLostError,
    TaskTimeoutError,
    ValidationError,
)
from bo_queue.registry import HandlerSpec, Resources
from bo_queue.retry import RetryPolicy
from bo_queue.states import Priority, TaskState
from bo_queue.validation import utc
from workers.execution import run_handler

log = logging.getLogger(__name__)

# Whether this worker's pool enforces Celery's time limits on a plain (not async)
# handler: only prefork does (signals in its child processes); workers.lifecycle says.
sync_limits_enforced = True

# Called as listener(task, payload, result, error) once a task has ended for good
# (after its result is stored): how an evaluation's outcome reaches its study.
FinishListener = Callable[["HandlerTask", Any, Any, BaseException | None], None]
finish_listeners: list[FinishListener] = []


class HandlerRequest(Request):
    """Celery's worker-side request, except that the failure hooks of a hard time limit
    (which Celery calls in the worker's main process, outside any task) see the task's
    own request, as every other ending does: its id, worker and headers (`bo_study`
    says an evaluation's study must hear of it)."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        self.task.request_stack.push(Context(self.request_dict))
        try:
            super().on_timeout(soft, timeout)
        finally:
            self.task.request_stack.pop()


class HandlerTask(Task[Any, Any]):
    """The Celery task class behind a bo_queue handler."""

    bq: BOQueue
    spec: HandlerSpec
    typing = False
    Request = f"{__name__}:HandlerRequest"

    # Listeners (a study waiting for this evaluation) hear first: a worker lost between
    # the two leaves a record still RUNNING, so the redelivered task runs and tells
    # again (the study ignores the repeat), instead of a record that says done to a
    # study that never heard.
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        _notify(self, args, retval, None)
        fields = {"finished_at": time.time(), "progress": 1.0, **run_report(self)}
        if getattr(self.request, "bo_store_result", False):
            store_success(self, task_id, retval, fields)
        else:
            move_record(self.bq, task_id, TaskState.SUCCEEDED, **fields)
        _hook(self.spec.on_success, self.request, retval)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Celery sends task_failure right after this: record_failure ends the record.
        _notify(self, args, None, exc)


def defer_result(task: HandlerTask) -> None:
    """Leave the success's result to `store_success` (called from on_success, after Celery
    would have stored it): one script instead of Celery's GET and SETEX + PUBLISH, then our
    record's. Only when results and records share the Redis, and for a task that is not
    part of a Celery chord (whose counter reads the stored results as it goes)."""
    req, settings = task.request, task.bq.settings
    if req.chord is None and not req.ignore_result and settings.results_url == settings.redis_url:
        req.ignore_result = True  # read by Celery's mark_as_done, after the task returns
        setattr(req, "bo_store_result", True)  # noqa: B010


def store_success(task: HandlerTask, task_id: str, result: Any, fields: dict[str, Any]) -> None:
    """The result stored and the record SUCCEEDED in one script (RecordStore.succeed); if
    that fails (a result Celery's backend refuses), Celery's own store, then the record."""
    backend = cast(ResultBackend, task.backend)
    try:
        key, value, ttl = backend.success(task_id, result, task.request)
        task.bq.records.succeed(task_id, key, value, ttl, **fields)
    except ReplicaAckError as exc:  # written on the primary: as move_record says
        _unacked(task_id, TaskState.SUCCEEDED, exc)
    except Exception:
        log.exception("storing task %s's result with its record failed; storing it apart",
                      task_id)
        backend.store_result(task_id, result, states.SUCCESS, request=task.request)
        move_record(task.bq, task_id, TaskState.SUCCEEDED, **fields)


def record_failure(task: HandlerTask, task_id: str, exc: BaseException) -> None:
    """The one writer of a failure ending: the record says FAILED, then the handler's
    on_failure hook runs (called by the task_failure signal, workers.lifecycle)."""
    move_record(
        task.bq, task_id, TaskState.FAILED, finished_at=time.time(), error=describe(exc),
        **run_report(task),
    )
    _hook(task.spec.on_failure, task.request, exc)


def move_record(bq: BOQueue, task_id: str, state: TaskState, **fields: Any) -> None:
    """The record says how the run went (it ended, or waits for a retry). With
    replica_acks, a write too few replicas acknowledged is logged as an error, not
    raised: the hooks that call this run after Celery stored the result, where raising
    would store a failure over it. At-least-once still holds: the task's message is
    acknowledged after this write, later in the one replication stream, so a failover
    that loses the record (and the result before it) loses that acknowledgement too,
    and the message comes back and runs again."""
    try:
        bq.records.transition(task_id, state, **fields)
    except ReplicaAckError as exc:
        _unacked(task_id, state, exc)


def _unacked(task_id: str, state: TaskState, exc: ReplicaAckError) -> None:
    log.error("task %s went %s, but %s; if it is lost, the task runs again",
              task_id, state.value, exc)


def _notify(task: HandlerTask, args: Any, result: Any, error: BaseException | None) -> None:
    payload = args[0] if args else None
    for listener in finish_listeners:
        try:
            listener(task, payload, result, error)
        except Exception:
            log.exception("finish listener %s failed for task %s", listener, task.request.id)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _hook(hook: Any, request: Any, value: Any, *extra: Any) -> None:
    ctx = getattr(request, "bo_context", None)
    if hook is None or ctx is None:
        return
    try:
        hook(ctx, value, *extra)
    except Exception:
        log.exception("the %s hook of handler %s raised", hook.__name__, ctx.handler)


def execute(task: HandlerTask, payload: dict[str, Any]) -> Any:
    bq, spec, req = task.bq, task.spec, task.request
    task_id = str(req.id)
    needs = _needs(req, spec)
    if not (spec.max_concurrency or spec.rate_limit or needs) or bq.records.is_cancelled(task_id):
        return _start_and_run(task, payload, task_id)  # (a cancelled one ends there at once)
    gate = admission_gate(bq, str(req.hostname or "?"))
    admitted = gate.admit(task_id, spec.name, spec.max_concurrency, spec.rate_limit, needs)
    if isinstance(admitted, float):  # not now: back to Redis, sent again when it may
        _hold(task, payload, time.time() + admitted)
        raise Ignore()
    try:
        return _start_and_run(task, payload, task_id)
    finally:
        gate.release(admitted)


def _start_and_run(task: HandlerTask, payload: dict[str, Any], task_id: str) -> Any:
    bq, spec, req = task.bq, task.spec, task.request
    info = req.delivery_info or {}
    policy = retry_policy(req, spec)
    lost_allowed = max(policy.max_retries, bq.settings.max_lost_runs)
    start = functools.partial(
        bq.records.start, task_id, req.hostname or "?", spec.name,
        bq.settings.queue_for(spec.queue, info.get("routing_key")),
        Priority.from_broker(info.get("priority")), lost_allowed=lost_allowed,
        version=spec.version, run=uuid.uuid4().hex,
    )
    verdict, attempt = start()
    if verdict == "hold":  # paused, or waiting on a dependency added later: back to Redis
        verdict, attempt = start(held=_message(task, payload, None))
    if verdict == "held":
        raise Ignore()
    if verdict == "lost":  # Celery stores the failure; record_failure fails the record
        raise TaskLostError(
            f"the worker running task {task_id} died {attempt} times (killed, crashed or out "
            f"of memory); at most {lost_allowed} lost runs are run again"
        )
    if verdict == "cancelled":  # cancelled while queued: never start it
        task.backend.mark_as_revoked(task_id, "cancelled")
        raise Ignore()
    if verdict == "done":  # a redelivery of a task that already ended
        raise Ignore()
    study_id = payload.get("study_id") if isinstance(payload, dict) else None
    ctx = TaskContext(bq, task_id, spec.name, attempt, req.retries,
                      study_id=study_id if isinstance(study_id, str) else None)
    setattr(req, "bo_context", ctx)  # noqa: B010  (for the on_success/on_failure hooks)
    limit = time_limit(req, spec, bq)
    if limit is not None and not (spec.is_async or sync_limits_enforced):
        raise ConfigurationError(unenforceable(spec.name, limit))  # fails it; no retry
    of = "" if limit is None else f" of {limit:g} s"
    try:
        try:
            result = run_handler(spec, payload, ctx, limit, signalled=_signalled(req, limit))
        except SoftTimeLimitExceeded:  # Celery's signal, or the async handler's loop
            raise TaskTimeoutError(task_id, f"task {task_id} ran past its time limit{of}") from None
        if ctx.cancel_seen:
            raise TaskCancelledError(task_id, "cancelled while running")
        _check_json(spec.name, result)
        defer_result(task)
        return result
    except SoftTimeLimitExceeded:  # the other of the two, landing in the lines above
        raise TaskTimeoutError(task_id, f"task {task_id} ran past its time limit{of}") from None
    except TaskCancelledError as exc:
        task.backend.mark_as_revoked(task_id, exc.reason)
        move_record(
            bq, task_id, TaskState.CANCELLED, finished_at=time.time(), error=exc.reason,
            **run_report(task),
        )
        raise Ignore() from None
    except Exception as exc:
        if not policy.retries(exc) or req.retries >= policy.max_retries:
            raise  # Celery stores the failure, then on_failure and record_failure run
        raise _retry(task, policy, payload, exc) from exc


def retry_policy(req: Any, spec: HandlerSpec) -> RetryPolicy:
    """The task's retry policy: the submit's (its `bo_retry` header), else the handler's."""
    sent = _sent_retry(req)
    return spec.retry if sent is None else sent


def _sent_retry(req: Any) -> RetryPolicy | None:
    """The retry policy a submit sent with the task (its `bo_retry` header), if readable."""
    sent = getattr(req, "bo_retry", None)
    if isinstance(sent, dict):
        try:
            return RetryPolicy(**sent)
        except (ValidationError, TypeError):
            log.warning("task %s: ignoring an unreadable retry policy %r", req.id, sent)
    return None


def time_limit(req: Any, spec: HandlerSpec, bq: BOQueue) -> float | None:
    """The run's time limit: the submit's (Celery's `timelimit` header, [hard, soft]),
    else the handler's, else the default."""
    return _sent_time_limit(req) or spec.time_limit_s or bq.settings.default_time_limit_s


def _sent_time_limit(req: Any) -> float | None:
    """The submit's own (soft) time limit, from Celery's `timelimit` [hard, soft]."""
    sent = getattr(req, "timelimit", None)
    soft = sent[1] if isinstance(sent, list | tuple) and len(sent) == 2 else None
    if isinstance(soft, int | float) and not isinstance(soft, bool) and soft > 0:
        return float(soft)
    return None


def unenforceable(handler: str, limit: float) -> str:
    return (f"handler {handler!r} is not async and has a time limit of {limit:g} s, which "
            "this worker's pool cannot enforce (only prefork enforces limits on plain "
            "handlers): serve it from a prefork worker, make it `async def`, or drop its "
            "time limit")


def _signalled(req: Any, limit: float | None) -> bool:
    """Whether Celery's own soft time limit (a signal, in a prefork child) stops this run
    at `limit`: then an async handler's loop keeps its own limit as a backstop only, so
    that the two never both fire (the second would land after the first's TaskTimeoutError,
    in Celery's code, and be stored in its place)."""
    soft = (getattr(req, "timelimit", None) or (None, None))[1]
    return sync_limits_enforced and limit is not None and soft is not None and soft <= limit


def check_pool(bq: BOQueue, enforces: bool, queues: set[str] | None) -> None:
    """Refuse to start a worker whose pool cannot enforce the time limit of a plain
    handler it serves from `queues` (None: every configured queue); set what the run
    checks for the others (a submit's own limit, a task sent to another queue)."""
    global sync_limits_enforced
    sync_limits_enforced = enforces
    if enforces:
        return
    for name, spec in sorted(registry.registered().items()):
        limit = spec.time_limit_s or bq.settings.default_time_limit_s
        served = queues is None or bq.settings.queue_for(spec.queue) in queues
        if limit is not None and served and not spec.is_async:
            raise ConfigurationError(unenforceable(name, limit))


def run_report(task: HandlerTask) -> dict[str, Any]:
    """What a finished run adds to the record: its cost and its ctx.log lines."""
    ctx: TaskContext | None = getattr(task.request, "bo_context", None)
    if ctx is None:
        return {}
    return {"usage": json.dumps(ctx.usage) if ctx.usage else None,
            "log": json.dumps(ctx.log.lines) if ctx.log.lines else None}


def _needs(req: Any, spec: HandlerSpec) -> Resources | None:
    """The resources this run needs: the submit's (a message header), else the handler's."""
    return _sent_resources(req) or spec.resources


def _sent_resources(req: Any) -> Resources | None:
    """The resources a submit sent with the task (its `bo_resources` header), if readable."""
    sent = getattr(req, "bo_resources", None)
    if isinstance(sent, dict):
        try:
            return Resources(**sent)
        except pydantic.ValidationError:
            log.warning("task %s: ignoring unreadable resources %r", req.id, sent)
    return None


_gates: dict[tuple[int, str], Gate] = {}


def admission_gate(bq: BOQueue, worker: str) -> Gate:
    """This worker's gate (one per BOQueue and hostname)."""
    key = (id(bq), worker)
    if key not in _gates:
        _gates[key] = Gate(bq.redis, bq.keys, worker, bq.settings.worker_offers,
                           bq.settings.limit_lease_s)
    return _gates[key]


def _retry(task: HandlerTask, policy: RetryPolicy, payload: dict[str, Any],
           exc: Exception) -> Retry:
    bq, spec, req = task.bq, task.spec, task.request
    task_id = str(req.id)
    delay = policy.delay_s(req.retries)
    due_at = time.time() + delay
    move_record(
        bq, task_id, TaskState.RETRYING, ttl_s=bq.records.ttl_for(due_at), next_attempt_at=due_at,
        retries=req.retries + 1, error=describe(exc), **run_report(task),
    )
    _hook(spec.on_retry, req, exc, delay)
    if delay <= bq.settings.hold_delays_over_s:  # the headers and time limits go along
        # kwargsrepr: what Flower shows of the task's name (celery-types' stub lacks this
        # option, which retry passes on to apply_async like the others)
        return task.retry(  # type: ignore[call-arg]
            exc=exc, countdown=delay, max_retries=policy.max_retries, throw=False,
            kwargsrepr=getattr(req, "kwargsrepr", None),
        )
    # A long backoff waits in Redis, not in a worker's memory (see bo_queue.core.delays).
    _hold(task, payload, due_at, retries=req.retries + 1)
    return Retry(exc=exc, when=utc(due_at))


def _hold(task: HandlerTask, payload: dict[str, Any], due_at: float,
          retries: int | None = None) -> None:
    """Put this task's message back in Redis, to be sent again at `due_at`."""
    message = _message(task, payload, due_at, retries)
    with task.bq.redis.pipeline() as pipe:  # the spec and its schedule entry together
        task.bq.delays.hold(pipe, str(task.request.id), due_at, message)
        pipe.execute()


def _message(task: HandlerTask, payload: dict[str, Any], due_at: float | None,
             retries: int | None = None) -> Message:
    """This task's message as it came, to be kept in Redis and sent again."""
    bq, spec, req = task.bq, task.spec, task.request
    info = req.delivery_info or {}
    expires = datetime.fromisoformat(str(req.expires)).timestamp() if req.expires else None
    # the headers it came with go with it, those that can be read
    sent = getattr(req, "bo_resources", None) if _sent_resources(req) else None
    marker = getattr(req, "bo_study", None)
    policy = _sent_retry(req)
    return Message(
        handler=spec.name, payload=payload,
        queue=bq.settings.queue_for(spec.queue, info.get("routing_key")),
        priority=info.get("priority"), due_at=due_at, expires_at=expires,
        retries=req.retries if retries is None else retries, parent_id=req.parent_id,
        resources=sent,
        study=marker if evaluation_of(marker) else None,
        kwargsrepr=getattr(req, "kwargsrepr", None),  # what Flower shows of its name
        retry=None if policy is None else policy.describe(),
        time_limit=_sent_time_limit(req),
    )


def _check_json(handler: str, result: Any) -> None:
    # Not validation.check_json: a result has no depth limit (Celery stores it, not Lua).
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidResultError(
            f"handler {handler!r} returned a value that is not JSON-serialisable: {exc}"
        ) from None


def bind_handlers(app: Celery, bq: BOQueue) -> list[str]:
    """Make a Celery task on `app` for every registered handler not bound yet."""
    bound = []
    for name, spec in registry.registered().items():
        if name in app.tasks:
            continue
        limit = spec.time_limit_s or bq.settings.default_time_limit_s
        if limit is not None and limit + HARD_LIMIT_GRACE_S >= bq.settings.visibility_timeout_s:
            raise ConfigurationError(
                f"handler {name!r}: time limit {limit} s (+{HARD_LIMIT_GRACE_S} s grace) must be "
                f"below visibility_timeout_s={bq.settings.visibility_timeout_s}"
            )
        limits = {} if limit is None else {
            "soft_time_limit": limit, "time_limit": limit + HARD_LIMIT_GRACE_S
        }
        declare: Any = app.task  # celery-types' overloads do not cover float time limits
        declare(
            name=name, base=HandlerTask, bind=True, bq=bq, spec=spec,
            queue=bq.settings.queue_for(spec.queue),
            max_retries=spec.retry.max_retries, **limits,
        )(execute)
        bound.append(name)
    return bound
