"""BOQueue: the facade producers use to submit, watch and cancel tasks."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kombu.exceptions
import pydantic
import redis
from celery import Celery
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bo_queue import registry
from bo_queue.config import Settings
from bo_queue.core import dependencies, placement
from bo_queue.core.celery_app import make_celery
from bo_queue.core.delays import RELEASE_BATCH, DelayedSubmissions
from bo_queue.core.dependencies import DependencyGraph, OnDependencyFailure
from bo_queue.core.handle import TaskHandle
from bo_queue.core.keys import PULL_QUEUE, Keys
from bo_queue.core.outbox import Outbox
from bo_queue.core.records import RecordStore, TaskInfo, TaskTree
from bo_queue.core.results import CallbackDispatcher, ResultWaiter, final_fields
from bo_queue.errors import (
    BrokerUnavailableError,
    DependencyError,
    UnknownHandlerError,
    UnknownTaskError,
    ValidationError,
    shown,
)
from bo_queue.registry import VERSION, Resources
from bo_queue.states import Priority, PriorityInput, TaskState

if TYPE_CHECKING:
    from bo_queue.agents import AgentManager
    from bo_queue.monitor.manager import Monitor
    from bo_queue.schedules import ScheduleManager
    from bo_queue.studies.manager import StudyManager
    from bo_queue.workflows.manager import WorkflowManager


# How far ahead a task may be due or expire: record TTLs and timestamps stay in range
# (Redis EXPIRE, datetime), whatever a caller sends (1e308, inf).
MAX_HORIZON_S = 10 * 366 * 86400.0

# What a task id may be (a request's own `id`, `parent_id`, `depends_on`): no ':', which
# separates a task's own keys ({ns}:task:<id>:children, :checkpoint, ...), so an id can
# never name another task's key.
TASK_ID = r"^[A-Za-z0-9._@-]{1,128}$"
_TASK_ID = re.compile(TASK_ID)

# How deeply JSON (a payload, evaluator options) may nest: json.dumps recurses, and Lua's
# cjson stops at 1000 levels; real payloads are nowhere near either.
MAX_JSON_DEPTH = 100


class TaskRequest(BaseModel):
    """One submission, validated at the edge. `submit_many` takes these (or dicts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    handler: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: PriorityInput = Priority.NORMAL
    queue: str | None = None
    countdown: float | None = Field(default=None, ge=0)
    eta: datetime | None = None
    expires: float | datetime | None = None
    tags: tuple[str, ...] = ()
    parent_id: str | None = Field(default=None, pattern=TASK_ID)
    id: str | None = Field(default=None, pattern=TASK_ID)
    depends_on: tuple[str, ...] = ()
    on_dependency_failure: OnDependencyFailure = "cancel"
    resources: Resources | None = None  # what a run needs; default: the handler's
    version: str | None = Field(default=None, pattern=VERSION.pattern)  # a handler version

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Priority:
        plain = isinstance(value, str) and len(value) <= 20
        level = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9
        if not (isinstance(value, Priority) or plain or level):
            # not for Priority.parse's message: repr() of a 5,000-digit int or of a list
            # nested 100,000 deep raises (ValueError, RecursionError)
            names = ", ".join(Priority.__members__)
            raise ValueError(f"unknown priority {shown(value)}; use one of {names}")
        return Priority.parse(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)  # one tag, not its characters
        if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
            return tuple(value)
        return value  # pydantic says what is wrong with it (None, a number, ...)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: tuple[str, ...]) -> tuple[str, ...]:
        if any(not tag or len(tag) > 128 or not encodable(tag) for tag in tags):
            raise ValueError("tags must be non-empty UTF-8 strings of at most 128 characters")
        return tuple(dict.fromkeys(tags))

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_on(cls, value: Any) -> Any:
        if isinstance(value, str | TaskHandle):
            value = (value,)
        if not isinstance(value, Iterable) or isinstance(value, bytes | Mapping):
            return value  # pydantic says what is wrong with it (None, a number, ...)
        ids = [v.id if isinstance(v, TaskHandle) else v for v in value]
        return tuple(dict.fromkeys(ids)) if all(isinstance(i, str) for i in ids) else ids

    @field_validator("depends_on")
    @classmethod
    def _dependency_ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        bad = [i for i in ids if not _TASK_ID.fullmatch(i)]
        if bad:
            raise ValueError(f"not task ids: {', '.join(map(shown, bad[:5]))}")
        return ids

    @field_validator("expires")
    @classmethod
    def _expires(cls, value: float | datetime | None) -> float | datetime | None:
        if isinstance(value, int | float) and not value > 0:
            raise ValueError("expires (seconds from now) must be positive")
        return value


def _timestamp(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class _Plan:
    """A validated request turned into what gets written and sent."""

    __slots__ = ("due_at", "expires_at", "held", "id", "queue", "request", "study")

    def __init__(
        self, request: TaskRequest, queue: str, due_at: float | None,
        expires_at: float | None, held: bool, task_id: str | None = None,
        study: dict[str, Any] | None = None,
    ) -> None:
        self.id = task_id or str(uuid.uuid4())
        self.request = request
        self.queue = queue
        self.due_at = due_at
        self.expires_at = expires_at
        self.held = held
        self.study = study


class BOQueue:
    """Submit tasks to named priority queues, and watch, wait for and cancel them.

        bq = BOQueue(redis_url="redis://127.0.0.1:6379/0", namespace="boq")
        h = bq.submit("reports.build", {"x": 1}, priority="high", tags=("nightly",))
        h.get(timeout=10)
    """

    handler = staticmethod(registry.handler)

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        *,
        settings: Settings | None = None,
        ride_out_outages_s: float = 0.0,
        **overrides: Any,
    ) -> None:
        if settings is None:
            given = {"redis_url": redis_url, "namespace": namespace, **overrides}
            settings = Settings.load(**{k: v for k, v in given.items() if v is not None})
        elif redis_url or namespace or overrides:
            raise ValidationError("pass either settings or individual options, not both")
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.app: Celery = make_celery(settings)
        # A producer hears at once that Redis is down (BrokerUnavailableError). A worker
        # (ride_out_outages_s > 0) waits it out instead: a record or result write that
        # failed mid-task would otherwise fail a task that did nothing wrong.
        retry = None if ride_out_outages_s <= 0 else Retry(
            ExponentialBackoff(cap=1.0, base=0.05), retries=math.ceil(ride_out_outages_s) + 5
        )
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=settings.connect_timeout_s,
            socket_timeout=max(settings.connect_timeout_s, 10.0),
            **({} if retry is None else {"retry": retry}),
        )
        self.records = RecordStore(
            self.redis, self.keys, settings.result_expires_s, on_settled=self._on_settled,
            events_max_len=settings.events_max_len,
        )
        self.delays = DelayedSubmissions(self.redis, self.keys)
        self.outbox = Outbox(self.redis, self.keys)
        self._directory: dict[str, dict[str, Any]] = {}
        self._announced: set[str] = set()  # placed queues this producer has recorded
        self._directory_read_at = -math.inf
        self._results: ResultWaiter | None = None
        self._studies: StudyManager | None = None
        self._schedules: ScheduleManager | None = None
        self._workflows: WorkflowManager | None = None
        self._monitor: Monitor | None = None
        self._agents: AgentManager | None = None
        self._raw_redis: redis.Redis | None = None
        self._callbacks: CallbackDispatcher | None = None
        self._lock = threading.RLock()  # callbacks() builds results() under it

    @classmethod
    def from_env(cls, **overrides: Any) -> BOQueue:
        """Settings from BO_QUEUE_* environment variables (see Settings)."""
        return cls(settings=Settings.load(**overrides))

    def __enter__(self) -> BOQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this facade opened (and stop the callback thread)."""
        if self._callbacks is not None:
            self._callbacks.close()
        if self._results is not None:
            self._results.close()
        self.redis.close()
        if self._raw_redis is not None:
            self._raw_redis.close()
        redbeat = getattr(self.app, "redbeat_redis", None)  # set by bq.schedules
        if redbeat is not None:
            redbeat.close()
        self.app.close()  # Celery's broker pools

    @property
    def raw_redis(self) -> redis.Redis:
        """A client on the same server that returns bytes (for binary values)."""
        if self._raw_redis is None:
            self._raw_redis = redis.Redis.from_url(
                self.settings.redis_url, socket_connect_timeout=self.settings.connect_timeout_s
            )
        return self._raw_redis

    @property
    def schedules(self) -> ScheduleManager:
        """Periodic and cron schedules, run by `bo-queue beat` (bo_queue.schedules)."""
        if self._schedules is None:
            from bo_queue.schedules import ScheduleManager

            self._schedules = ScheduleManager(self)
        return self._schedules

    @property
    def studies(self) -> StudyManager:
        """Optimization studies: create, run, suggest, report, best, ... (bo_queue.studies)."""
        if self._studies is None:
            from bo_queue.studies.manager import StudyManager

            self._studies = StudyManager(self)
        return self._studies

    @property
    def workflows(self) -> WorkflowManager:
        """Workflow runs: run, status, pause, resume, set_vars, cancel, wait (.workflows)."""
        if self._workflows is None:
            from bo_queue.workflows.manager import WorkflowManager

            self._workflows = WorkflowManager(self)
        return self._workflows

    @property
    def monitor(self) -> Monitor:
        """Queues, workers, metrics and state-change events (bo_queue.monitor.manager)."""
        if self._monitor is None:
            from bo_queue.monitor.manager import Monitor

            self._monitor = Monitor(self)
        return self._monitor

    @property
    def agents(self) -> AgentManager:
        """Pull mode: task types external agents claim, agents, leases (bo_queue.agents)."""
        if self._agents is None:
            with self._lock:
                if self._agents is None:
                    from bo_queue.agents import AgentManager

                    self._agents = AgentManager(self)
        return self._agents

    def tasks(self, state: TaskState | str | None = None, **filters: Any) -> list[TaskInfo]:
        """Tasks by state, tag, queue, handler, since, limit (see Monitor.tasks)."""
        return self.monitor.tasks(state, **filters)

    def failed(self, limit: int = 100) -> list[TaskInfo]:
        """The failed-task registry, newest first (see Monitor.failed)."""
        return self.monitor.failed(limit)

    def retry(self, task_id: str) -> TaskHandle:
        """Run a FAILED task again as a new task (see Monitor.retry)."""
        return self.monitor.retry(task_id)

    # -- results ------------------------------------------------------------------------

    @property
    def results(self) -> ResultWaiter:
        if self._results is None:
            with self._lock:
                if self._results is None:
                    backend: Any = self.app.backend
                    probe = backend.get_key_for_task("x")  # Celery's own key scheme
                    probe = probe.decode() if isinstance(probe, bytes) else probe
                    prefix = probe[: -len("x")]
                    client = redis.Redis.from_url(
                        self.settings.results_url,
                        socket_connect_timeout=self.settings.connect_timeout_s,
                    )
                    self._results = ResultWaiter(client, prefix)
        return self._results

    @property
    def callbacks(self) -> CallbackDispatcher:
        if self._callbacks is None:
            with self._lock:
                if self._callbacks is None:
                    self._callbacks = CallbackDispatcher(self.results)
        return self._callbacks

    # -- submitting ---------------------------------------------------------------------

    def submit(
        self,
        handler: str,
        payload: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str | int = Priority.NORMAL,
        queue: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        tags: Iterable[str] = (),
        parent_id: str | None = None,
        depends_on: Iterable[str | TaskHandle] = (),
        on_dependency_failure: OnDependencyFailure = "cancel",
        resources: Resources | Mapping[str, float] | None = None,
        version: str | None = None,
    ) -> TaskHandle:
        """Queue one task for the handler `handler`. Raises ValidationError (or
        UnknownHandlerError) for bad input, DependencyError for an unknown dependency,
        and BrokerUnavailableError if Redis is down; in each case nothing was queued.

        With `depends_on`, the task stays PENDING until every dependency has SUCCEEDED,
        then is queued; if one fails, is cancelled or expires, the task is CANCELLED with
        the reason, unless on_dependency_failure="run" (it then runs once all have ended).
        `resources` (cpu, memory_mb, gpu) replaces the handler's; `version` sends it to a
        worker serving that version of the handler (an error if no live worker does).
        """
        request = _request(
            handler=handler, payload=payload if payload is not None else {},
            priority=priority, queue=queue, countdown=countdown, eta=eta,
            expires=expires, tags=tags, parent_id=parent_id,
            depends_on=depends_on, on_dependency_failure=on_dependency_failure,
            resources=resources, version=version,
        )
        return self._submit([self._plan(request)])[0]

    def submit_many(
        self, requests: Iterable[TaskRequest | Mapping[str, Any]], *, durable: bool = False
    ) -> list[TaskHandle]:
        """Queue many tasks in two pipelined round trips (records, then broker).
        All are validated first: one bad request rejects the batch, nothing is queued.

        Requests may name their own `id` and depend on each other (`depends_on`): a
        whole DAG in one call. A cycle raises DependencyError naming it.

        durable=True writes each message to Redis with its record and sends it from
        there under a lease, so a producer that dies between the two loses none (workers
        send what it left); it costs two more round trips."""
        if not isinstance(requests, Iterable) or isinstance(requests, str | bytes | Mapping):
            raise ValidationError(
                f"submit_many takes an iterable of requests, not {type(requests).__name__}"
            )
        plans = []
        for index, item in enumerate(requests):
            try:
                request = item if isinstance(item, TaskRequest) else _request(**item)
                plans.append(self._plan(request))
            except ValidationError as exc:
                exc.args = (f"request {index}: {exc}",)  # keeps the type and its fields
                raise
            except TypeError as exc:
                raise ValidationError(f"request {index}: {exc}") from None
        return self._submit(plans, durable)

    def _plan(
        self, request: TaskRequest, task_id: str | None = None,
        study: dict[str, Any] | None = None,
    ) -> _Plan:
        """`study` marks a study's evaluation ({"study_id", "trial_index"}, set only by
        the study step): it travels with the message as the `bo_study` header, and only
        an evaluation so marked reports its outcome to a study (workers.studies)."""
        _check_payload(request.payload, self.settings.max_payload_bytes)
        entry = self._handler_entry(request.handler)
        declared = entry.get("queue")
        queue = request.queue or declared or self.settings.default_queue
        if queue not in self.settings.queues and queue != declared:
            raise ValidationError(
                f"unknown queue {queue!r}; configured queues: {', '.join(self.settings.queues)}"
            )
        if declared == PULL_QUEUE and queue != PULL_QUEUE:  # no worker serves a pull type
            raise ValidationError(f"{request.handler!r} is a pull task type: agents claim "
                                  f"it; it cannot go to queue {queue!r}")
        if queue != PULL_QUEUE:  # agents match capabilities themselves (bo_queue.agents)
            queue = self._placed(request, entry, queue)
        now = time.time()
        due_at = None
        if request.countdown is not None and request.eta is not None:
            raise ValidationError("give countdown or eta, not both")
        if request.countdown:
            due_at = now + request.countdown
        if request.eta is not None:
            due_at = _timestamp(request.eta)
            if due_at < now - self.settings.eta_tolerance_s:
                raise ValidationError(f"eta {request.eta.isoformat()} is in the past")
            due_at = max(due_at, now)
        if due_at is not None and not due_at - now <= MAX_HORIZON_S:
            raise ValidationError("countdown and eta may be at most ten years ahead")
        expires_at = None
        if request.expires is not None:
            expires = request.expires
            expires_at = _timestamp(expires) if isinstance(expires, datetime) else now + expires
            if expires_at <= (due_at or now):
                raise ValidationError("expires must be later than when the task is due")
            if not expires_at - now <= MAX_HORIZON_S:
                raise ValidationError("expires may be at most ten years ahead")
        held = due_at is not None and due_at - now > self.settings.hold_delays_over_s
        return _Plan(request, queue, due_at, expires_at, held, task_id or request.id, study)

    def _submit(self, plans: list[_Plan], durable: bool = False) -> list[TaskHandle]:
        now = time.time()
        with self._broker_errors():
            ordered = self._check_dependencies(plans)
        if durable:
            for plan in plans:
                plan.held = True  # held, due when it is due: sent below, or by a worker
        waits = []
        with self._broker_errors(), self.redis.pipeline(transaction=False) as pipe:
            for plan in ordered:
                req = plan.request
                waiting = bool(req.depends_on)
                self.records.create(pipe, {
                    "id": plan.id, "handler": req.handler, "queue": plan.queue,
                    "priority": req.priority, "tags": req.tags, "parent_id": req.parent_id,
                    "state": TaskState.PENDING if plan.held or waiting else TaskState.QUEUED,
                    "created_at": now, "due_at": plan.due_at, "expires_at": plan.expires_at,
                    "depends_on": req.depends_on or None,
                    "on_dependency_failure": req.on_dependency_failure if waiting else None,
                })
                if waiting:
                    waits.append((len(pipe), plan.id))
                    self.records.wait_for(pipe, plan.id, req.depends_on, self._message(plan))
                elif plan.held:
                    self.delays.hold(pipe, plan.id, plan.due_at or now, self._message(plan))
                elif plan.queue != PULL_QUEUE:  # sent below: kept until a worker starts it
                    self.outbox.keep(pipe, plan.id, self._message(plan))
            replies = pipe.execute()
        verdicts = {task_id: str(replies[index][0]) for index, task_id in waits}
        cancelled = [task_id for task_id, verdict in verdicts.items() if verdict == "cancelled"]
        if cancelled or "queued" in verdicts.values() or durable:
            with self._broker_errors():
                self._on_settled(int("queued" in verdicts.values() or durable), cancelled)
        to_send = [p for p in plans if not p.held and not p.request.depends_on]
        if to_send:
            with (
                self._broker_errors(),
                self.app.producer_or_acquire() as producer,
                producer.batch() if len(to_send) > 1 else _nothing(),
            ):
                for plan in to_send:
                    self.send(plan.id, self._message(plan), producer=producer, kept=True)
        return [TaskHandle(self, plan.id) for plan in plans]

    def _check_dependencies(self, plans: list[_Plan]) -> list[_Plan]:
        """Reject cycles, self-dependencies, unknown dependencies and taken ids; return
        the plans in an order where each comes after the plans it depends on."""
        by_id = {plan.id: plan for plan in plans}
        if len(by_id) < len(plans):
            raise ValidationError("two requests in the batch have the same id")
        named = [plan.id for plan in plans if plan.request.id]
        if not named and not any(plan.request.depends_on for plan in plans):
            return plans
        graph = {plan.id: plan.request.depends_on for plan in plans}
        dependencies.check_acyclic(graph)
        outside = sorted({d for deps in graph.values() for d in deps if d not in by_id})
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in outside + named:
                pipe.exists(self.keys.task(task_id))
            found = pipe.execute()
        unknown = [d for d, ok in zip(outside, found, strict=False) if not ok]
        if unknown:
            raise DependencyError(f"unknown dependencies (no such task): {', '.join(unknown)}")
        taken = [i for i, ok in zip(named, found[len(outside):], strict=True) if ok]
        if taken:
            raise ValidationError(f"task ids already in use: {', '.join(taken)}")
        return [by_id[i] for layer in dependencies.layers(graph) for i in layer]

    def _on_settled(self, released: int, cancelled: list[str]) -> None:
        """Ending a task settled its dependents: send those released, and wake anyone
        waiting on those cancelled (their record already says why)."""
        if cancelled:
            with self.redis.pipeline(transaction=False) as pipe:
                for task_id in cancelled:
                    pipe.hget(self.keys.task(task_id), "error")
                reasons = pipe.execute()
            for task_id, reason in zip(cancelled, reasons, strict=True):
                self.app.backend.mark_as_revoked(task_id, reason or "dependency failed")
        if released:
            while self.delays.release_due(self.send) >= RELEASE_BATCH:
                pass

    def _message(self, plan: _Plan) -> dict[str, Any]:
        req = plan.request
        return {
            "handler": req.handler, "payload": req.payload, "queue": plan.queue,
            "priority": req.priority.broker_priority, "due_at": plan.due_at,
            "expires_at": plan.expires_at, "retries": 0, "parent_id": req.parent_id,
            "resources": req.resources.model_dump() if req.resources else None,
            "study": plan.study,
        }

    def send(self, task_id: str, message: Mapping[str, Any], producer: Any = None,
             kept: bool = False) -> None:
        """Hand one task message to Celery (used for new, held and retried tasks), or,
        for a pull type, to the agents (bo_queue.agents). The message is kept in the
        outbox until a worker starts the task (bo_queue.core.outbox); `kept`: it is already."""
        if message["queue"] == PULL_QUEUE:
            self.agents.offer(task_id, message)
            return
        if not kept:
            self.outbox.keep(self.redis, task_id, dict(message))
        due_at, expires_at = message.get("due_at"), message.get("expires_at")
        headers: dict[str, Any] = {}  # they travel with the message (and its retries)
        if message.get("resources"):  # a submit's own resources (the worker's admission)
            headers["bo_resources"] = message["resources"]
        if message.get("study"):  # a study's evaluation (workers.studies)
            headers["bo_study"] = message["study"]
        self.app.send_task(
            message["handler"],
            args=[message["payload"]],
            task_id=task_id,
            queue=message["queue"],
            priority=message["priority"],
            eta=_utc(due_at) if due_at and due_at > time.time() else None,
            expires=_utc(expires_at) if expires_at else None,
            retries=message.get("retries", 0),
            parent_id=message.get("parent_id"),
            producer=producer,
            headers=headers or None,
        )

    @contextmanager
    def _broker_errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError) as exc:  # noqa: E501
            raise BrokerUnavailableError(
                f"Redis at {redact(self.settings.redis_url)} is unavailable: {exc}"
            ) from exc

    # -- handlers -----------------------------------------------------------------------

    def _handler_queue(self, name: str) -> str | None:
        """The queue a handler declared; UnknownHandlerError if nobody declared it."""
        queue: str | None = self._handler_entry(name).get("queue")
        return queue

    def _handler_entry(self, name: str) -> dict[str, Any]:
        """What is known of a handler (HandlerSpec.describe()); UnknownHandlerError if
        nobody declared it."""
        spec = registry.get(name)
        if spec is not None:
            return spec.describe()
        entry = self._directory.get(name)
        if entry is None and time.monotonic() - self._directory_read_at > 0.5:
            self.refresh_handlers()
            entry = self._directory.get(name)
        if entry is None:
            raise UnknownHandlerError(name, sorted(self._directory) + sorted(registry.registered()))
        return entry

    def _placed(self, request: TaskRequest, entry: Mapping[str, Any], queue: str) -> str:
        """The broker queue for a task: its capability queue, or its version's queue
        (bo_queue.core.placement). With a version, a live worker must consume that queue; with
        resources, one of the live workers that consume it (if any is up) must offer them."""
        requires = tuple(entry.get("requires") or ())
        needs = request.resources
        if needs is None and entry.get("resources"):
            needs = Resources.model_validate(entry["resources"])
        if request.version is None:
            target = placement.capability_queue(queue, requires)
        else:
            target = placement.version_queue(queue, request.handler, request.version)
        if request.version is not None or needs is not None:
            with self._broker_errors():
                serving = [card for card in self.monitor.live_worker_cards()
                           if target in card.get("queues", ())]
            if request.version is not None and not serving:
                raise ValidationError(
                    f"no live worker serves handler {request.handler!r} version "
                    f"{request.version!r} on queue {queue!r}"
                )
            offers = [Resources.model_validate(card.get("offers") or {}) for card in serving]
            if needs is not None and offers and not any(needs.fits(o) for o in offers):
                raise ValidationError(
                    f"no live worker on queue {target!r} offers {needs.describe()} "
                    f"(they offer: {'; '.join(str(o.describe()) for o in offers)})"
                )
        if target != queue and target not in self._announced:  # for bq.monitor.queues()
            with self._broker_errors():
                self.redis.sadd(self.keys.placed_queues, target)
            self._announced.add(target)
        return target

    def refresh_handlers(self) -> dict[str, dict[str, Any]]:
        """Re-read the handler directory that workers publish when they start."""
        with self._broker_errors():
            raw = self.redis.hgetall(self.keys.handlers)
        self._directory = {str(name): json.loads(spec) for name, spec in raw.items()}
        self._directory_read_at = time.monotonic()
        return dict(self._directory)

    # -- looking and cancelling ---------------------------------------------------------

    def handle(self, task_id: str) -> TaskHandle:
        _known_id(task_id)
        with self._broker_errors():
            if not self.records.exists(task_id):
                raise UnknownTaskError(task_id)
        return TaskHandle(self, task_id)

    def info(self, task_id: str) -> TaskInfo:
        _known_id(task_id)
        with self._broker_errors():
            return self._info(task_id)

    def _info(self, task_id: str) -> TaskInfo:
        record = self.records.get(task_id)
        if record is None:
            raise UnknownTaskError(task_id)
        if not record.state.terminal:
            # The result backend learns that a task ended a moment before the worker
            # updates the record; the stored result wins, so get() and state agree.
            meta = self.results.fetch(task_id)
            if meta is not None:
                record = TaskInfo.model_validate({**record.model_dump(), **final_fields(meta)})
        return record

    def cancel(
        self, task_id: str, *, terminate: bool = False, reason: str = "cancelled"
    ) -> TaskState:
        """Cancel a task, persistently. A queued or delayed task never starts; a running
        one sees `ctx.cancelled` (or is killed with terminate=True). Its subtasks (ctx.spawn,
        parent_id), to any depth, are cancelled with it, and so are the tasks that depend
        on it. Returns the task's state after the call: CANCELLED, RUNNING (stopping), or
        the state it had already ended in.
        """
        _known_id(task_id)
        with self._broker_errors():
            prior, after = self._cancel(task_id, terminate, reason)
            if not prior.terminal:  # a finished parent's live subtasks are theirs to finish
                self._cancel_descendants(task_id, terminate)
        return after

    def _cancel_descendants(self, task_id: str, terminate: bool) -> None:
        for child in self.records.descendants(task_id):
            try:
                self._cancel(child, terminate, f"ancestor {task_id} cancelled")
            except UnknownTaskError:  # past its retention: nothing left to cancel
                continue

    def _cancel(self, task_id: str, terminate: bool, reason: str) -> tuple[TaskState, TaskState]:
        """(state before, state after) of a cancellation."""
        prior = self.records.cancel(task_id, reason)
        if prior is None:
            raise UnknownTaskError(task_id)
        if prior.terminal:
            return prior, prior
        if prior is TaskState.RUNNING:
            if terminate:
                self.app.control.revoke(task_id, terminate=True, signal="SIGTERM")
            return prior, TaskState.RUNNING
        self.delays.drop(task_id)
        self.app.backend.mark_as_revoked(task_id, reason)  # wakes get() and then()
        return prior, TaskState.CANCELLED

    def cancel_tag(self, tag: str, *, terminate: bool = False) -> list[str]:
        """Cancel every unfinished task carrying `tag`; returns the ids it cancelled."""
        if not isinstance(tag, str) or not tag or not encodable(tag):
            raise ValidationError(f"a tag is a non-empty UTF-8 string, not {shown(tag)}")
        cancelled = []
        with self._broker_errors():
            tagged = sorted(self.records.tagged(tag))
        for task_id in tagged:
            try:
                with self._broker_errors():
                    prior, _ = self._cancel(task_id, terminate, f"tag {tag!r} cancelled")
                    if not prior.terminal:
                        self._cancel_descendants(task_id, terminate)
            except UnknownTaskError:  # its record expired; nothing left to cancel
                continue
            if not prior.terminal:
                cancelled.append(task_id)
        return cancelled

    # -- lineage and dependencies -------------------------------------------------------

    def children(self, task_id: str) -> list[TaskInfo]:
        """The direct subtasks of a task (ctx.spawn or parent_id), oldest first."""
        _known_id(task_id)
        with self._broker_errors():
            if not self.records.exists(task_id):
                raise UnknownTaskError(task_id)
            return self.records.children(task_id)

    def tree(self, task_id: str, max_depth: int = 20) -> TaskTree:
        """The task and its subtasks, to `max_depth` levels."""
        _known_id(task_id)
        with self._broker_errors():
            tree = self.records.tree(task_id, max_depth)
        if tree is None:
            raise UnknownTaskError(task_id)
        return tree

    def graph(self, task_ids: Iterable[str]) -> DependencyGraph:
        """The dependency graph around these tasks: them, what they depend on and what
        depends on them, transitively. `.to_dot()` renders it for Graphviz."""
        ids = [_known_id(task_id) for task_id in task_ids]
        with self._broker_errors():
            return dependencies.read_graph(self.records, ids)

    def plan(self, task_ids: Iterable[str]) -> list[list[str]]:
        """The execution plan of these tasks: topological layers, each of tasks that can
        run together once the layers before it are done, e.g. [[A], [B, C], [D]]."""
        ids = list(dict.fromkeys(_known_id(task_id) for task_id in task_ids))
        with self._broker_errors():
            graph = dependencies.read_graph(self.records, ids, expand=False)
        return dependencies.layers({i: graph.depends_on.get(i, []) for i in ids})


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _request(**fields: Any) -> TaskRequest:
    try:
        return TaskRequest(**fields)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValidationError(problems) from None


def redact(url: str) -> str:
    """The URL without its password (error messages end up in logs and HTTP replies)."""
    return re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", url)


def _known_id(task_id: object) -> str:
    """A task id that can name a record; anything else is no task (UnknownTaskError),
    before it is used in a key name (where "x:children" would name another key)."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise UnknownTaskError(task_id if isinstance(task_id, str) else shown(task_id))
    return task_id


def encodable(text: str) -> bool:
    """Whether Redis can store `text` (UTF-8: no lone surrogates such as '\ud800')."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply `value` nests (lists and dicts), counted without recursion and up to
    `limit` + 1: a caller's 100,000-deep list is measured, not a RecursionError."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_json(value: Any, what: str, limit: int | None = None) -> str:
    """`value` as compact JSON, or ValidationError saying why it cannot be: not
    JSON-serialisable (bytes, sets, objects, NaN, non-str keys), nesting deeper than
    MAX_JSON_DEPTH, or more than `limit` bytes."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValidationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None
    if limit is not None and len(text) > limit:
        raise ValidationError(f"{what} is {len(text)} bytes; the limit is {limit}")
    return text


def _check_payload(payload: Mapping[str, Any], limit: int) -> None:
    check_json(payload, "payload", limit)

