"""Core: the kernel every service stands on (bo_queue.core)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self, TypeVar

import kombu.exceptions
import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bo_queue import registry
from bo_queue.config import Settings
from bo_queue.core import dependencies, placement
from bo_queue.core.celery_app import make_celery
from bo_queue.core.changes import TaskChanges
from bo_queue.core.connections import redis_client
from bo_queue.core.delays import RELEASE_BATCH, DelayedSubmissions
from bo_queue.core.dependencies import DependencyGraph, OnDependencyFailure
from bo_queue.core.handle import TaskHandle
from bo_queue.core.heartbeats import Heartbeats
from bo_queue.core.keys import PULL_QUEUE, Keys
from bo_queue.core.message import HARD_LIMIT_GRACE_S, Message, kwargsrepr
from bo_queue.core.outbox import Outbox
from bo_queue.core.pull import PullQueue
from bo_queue.core.records import RecordStore, Sends, TaskInfo, TaskTree
from bo_queue.core.replicas import ReplicaAcks
from bo_queue.core.requests import Plan, TaskRequest, task_request
from bo_queue.core.results import CallbackDispatcher, ResultWaiter, final_fields
from bo_queue.core.steps import Pipe, Step, Steps, drive
from bo_queue.errors import (
    BrokerUnavailableError,
    DependencyError,
    UnknownHandlerError,
    UnknownTaskError,
    ValidationError,
    shown,
)
from bo_queue.registry import Resources
from bo_queue.retry import RetryPolicy
from bo_queue.states import Priority, TaskState
from bo_queue.validation import (
    MAX_HORIZON_S,
    check_payload,
    encodable,
    known_id,
    redact,
    timestamp,
)

T = TypeVar("T")

__all__ = ["Core", "Pipe", "Step", "Steps", "Submitted", "batch_of", "request_of", "with_result"]


@dataclass
class Submitted:
    """A submit's writes done: its task ids, and what Core.finish does after them."""

    ids: list[str]
    released: int  # dependents released (or durable sends held): settle sends them
    cancelled: list[str]  # dependents cancelled by a dependency that had failed
    offers: list[tuple[str, Message]]  # pull tasks, for their agents


class Core(TaskChanges):
    """The kernel: settings, key names, Redis clients, the Celery app, task records, held
    sends, the outbox and results, and what every service does with tasks (submit, send,
    cancel, look). BOQueue is this plus the lazy services (bo_queue.client).

    Services are typed against this class and use only its public names (the table in
    docs/architecture.md): the stores (`records`, `delays`, `outbox`, `results`,
    `heartbeats`, `pull`), the producer's calls (`submit`, `cancel`, `info`, `update`,
    `pause`, `resume`, `pause_queue`, `resume_queue`, `add_dependency`, ...), `check`
    and `submit_plans` (a submit in two steps, for callers that mark or batch plans),
    `send`, `settle`, `broker_errors`, and the handler directory (`handler_entry`,
    `handler_queue`, `handler_directory`, `refresh_handlers`, `forget_handlers`).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        *,
        settings: Settings | None = None,
        ride_out_outages_s: float = 0.0,
        client: redis.Redis | None = None,
        raw_client: redis.Redis | None = None,
        results_client: redis.Redis | None = None,
        **overrides: Any,
    ) -> None:
        """Settings from `settings`, or from the options given here and BO_QUEUE_*
        variables. The clients are built from the URLs unless given: `client` (strings,
        decode_responses=True) for records and every bo_queue key, `raw_client` (bytes) for
        binary values, `results_client` (bytes) for Celery's result backend and our reads
        of it. Tests give fakeredis ones; nothing connects before the first command."""
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
        self.redis = client or redis_client(
            settings,
            decode_responses=True,
            socket_connect_timeout=settings.connect_timeout_s,
            socket_timeout=max(settings.connect_timeout_s, 10.0),
            **({} if retry is None else {"retry": retry}),
        )
        # must-not-lose writes wait for this many replicas (bo_queue.core.replicas)
        self.acks = ReplicaAcks(settings.replica_acks, settings.replica_ack_timeout_s)
        self.records = RecordStore(
            self.redis, self.keys, settings.result_expires_s, on_settled=self.settle,
            events_max_len=settings.events_max_len, acks=self.acks,
        )
        self.delays = DelayedSubmissions(self.redis, self.keys)
        self.outbox = Outbox(self.redis, self.keys)
        self.heartbeats = Heartbeats(self.redis, self.keys, settings.heartbeat_timeout_s)
        self.pull = PullQueue(
            self.redis, self.keys, self.records.ttl_s, settings.events_max_len
        )
        self._directory: dict[str, dict[str, Any]] = {}
        self._announced: set[str] = set()  # placed queues this producer has recorded
        self._directory_read_at = -math.inf
        self._results: ResultWaiter | None = None
        self._raw_redis: redis.Redis | None = raw_client
        self._results_client = results_client
        if results_client is not None:
            backend: Any = self.app.backend
            backend.client = results_client  # Celery's writes and revocations go there too
        self._callbacks: CallbackDispatcher | None = None
        self._lock = threading.RLock()  # callbacks() builds results() under it

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Settings from BO_QUEUE_* environment variables (see Settings)."""
        return cls(settings=Settings.load(**overrides))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this object opened (and stop the callback thread)."""
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
            self._raw_redis = redis_client(
                self.settings, socket_connect_timeout=self.settings.connect_timeout_s
            )
        return self._raw_redis

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
                    client = self._results_client or redis_client(
                        self.settings, self.settings.results_url,
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
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        time_limit: float | None = None,
    ) -> TaskHandle:
        """Queue one task for the handler `handler`. Raises ValidationError (or
        UnknownHandlerError) for bad input, DependencyError for an unknown dependency,
        and BrokerUnavailableError if Redis is down; in each case nothing was queued.

        With `depends_on`, the task stays PENDING until every dependency has SUCCEEDED,
        then is queued; if one fails, is cancelled or expires, the task is CANCELLED with
        the reason, unless on_dependency_failure="run" (it then runs once all have ended).
        `resources` (cpu, memory_mb, gpu) replaces the handler's; `version` sends it to a
        worker serving that version of the handler (an error if no live worker does).
        `name`, `description` and `metadata` (a JSON object) are kept on the record, for
        `info()` and the filters of `tasks(name=, metadata=)`; the handler does not see them.
        `retry` (a RetryPolicy) and `time_limit` (seconds) replace the handler's for this
        task, its retries included; past its time limit a run fails with TaskTimeoutError.
        """
        request = request_of(
            handler, payload, priority=priority, queue=queue, countdown=countdown, eta=eta,
            expires=expires, tags=tags, parent_id=parent_id,
            depends_on=depends_on, on_dependency_failure=on_dependency_failure,
            resources=resources, version=version, name=name, description=description,
            metadata=metadata, retry=retry, time_limit=time_limit,
        )
        return self.submit_plans([self.check(request)])[0]

    def submit_many(
        self, requests: Iterable[TaskRequest | Mapping[str, Any]], *, durable: bool = False,
        created_by: str | None = None,
    ) -> list[TaskHandle]:
        """Queue many tasks in one round trip (their records and messages together).
        All are validated first: one bad request rejects the batch, nothing is queued.

        Requests may name their own `id` and depend on each other (`depends_on`): a
        whole DAG in one call. A cycle raises DependencyError naming it.

        durable=True writes each message to Redis with its record and sends it from
        there under a lease, so a producer that dies between the two loses none (workers
        send what it left); it costs two more round trips.

        `created_by` is recorded on each task (the HTTP API passes its API key's name)."""
        return self.submit_plans(self.check_all(batch_of(requests)), durable, created_by)

    def check_all(self, requests: list[TaskRequest | Mapping[str, Any]]) -> list[Plan]:
        """`check` each request of a batch; the first bad one's error names its index."""
        plans = []
        for index, item in enumerate(requests):
            try:
                request = item if isinstance(item, TaskRequest) else task_request(**item)
                plans.append(self.check(request))
            except ValidationError as exc:
                exc.args = (f"request {index}: {exc}",)  # keeps the type and its fields
                raise
            except TypeError as exc:
                raise ValidationError(f"request {index}: {exc}") from None
        return plans

    def check(
        self, request: TaskRequest, task_id: str | None = None,
        study: dict[str, Any] | None = None,
    ) -> Plan:
        """A request checked against the handler directory, the queues and the clock, as
        the Plan a submit writes and sends; ValidationError (or UnknownHandlerError) if
        it cannot be submitted. Nothing of the task is written (a capability or version
        queue it goes to is recorded, for bq.monitor.queues()).

        `study` marks a study's evaluation ({"study_id", "trial_index"}, set only by
        the study step): it travels with the message as the `bo_study` header, and only
        an evaluation so marked reports its outcome to a study (workers.study_step)."""
        check_payload(request.payload, self.settings.max_payload_bytes)
        entry = self.handler_entry(request.handler)
        declared = entry.get("queue")
        queue = self.settings.queue_for(declared, request.queue)
        if queue not in self.settings.queues and queue != declared:
            raise ValidationError(
                f"unknown queue {queue!r}; configured queues: {', '.join(self.settings.queues)}"
            )
        if declared == PULL_QUEUE and queue != PULL_QUEUE:  # no worker serves a pull type
            raise ValidationError(f"{request.handler!r} is a pull task type: agents claim "
                                  f"it; it cannot go to queue {queue!r}")
        if queue == PULL_QUEUE and (request.retry or request.time_limit):
            raise ValidationError(f"{request.handler!r} is a pull task type: its agents "
                                  "run it, with no retry policy or time limit of bo_queue's")
        limit = request.time_limit
        if limit is not None and limit + HARD_LIMIT_GRACE_S >= self.settings.visibility_timeout_s:
            raise ValidationError(
                f"time_limit {limit} s (+{HARD_LIMIT_GRACE_S} s grace) must be below "
                f"visibility_timeout_s={self.settings.visibility_timeout_s}"
            )
        if queue != PULL_QUEUE:  # agents match capabilities themselves (bo_queue.agents)
            queue = self._placed(request, entry, queue)
        now = time.time()
        due_at = None
        if request.countdown is not None and request.eta is not None:
            raise ValidationError("give countdown or eta, not both")
        if request.countdown:
            due_at = now + request.countdown
        if request.eta is not None:
            due_at = timestamp(request.eta)
            if due_at < now - self.settings.eta_tolerance_s:
                raise ValidationError(f"eta {request.eta.isoformat()} is in the past")
            due_at = max(due_at, now)
        if due_at is not None and not due_at - now <= MAX_HORIZON_S:
            raise ValidationError("countdown and eta may be at most ten years ahead")
        expires_at = None
        if request.expires is not None:
            expires = request.expires
            expires_at = timestamp(expires) if isinstance(expires, datetime) else now + expires
            if expires_at <= (due_at or now):
                raise ValidationError("expires must be later than when the task is due")
            if not expires_at - now <= MAX_HORIZON_S:
                raise ValidationError("expires may be at most ten years ahead")
        held = due_at is not None and due_at - now > self.settings.hold_delays_over_s
        return Plan(request, queue, due_at, expires_at, held, task_id or request.id, study)

    def submit_plans(
        self, plans: list[Plan], durable: bool = False, created_by: str | None = None
    ) -> list[TaskHandle]:
        """Write and send checked plans (see submit_many for `durable` and `created_by`)."""
        with self.broker_errors():
            done = self.run_steps(self.submitting(plans, durable, created_by))
            self.finish(done)
        return [TaskHandle(self, task_id) for task_id in done.ids]

    def run_steps(self, steps: Steps[T]) -> T:
        """Drive `steps` on this client: each pipeline it asks for, filled, executed
        (a CALL step called); bo_queue.aio drives the same steps on an asyncio client."""
        return drive(steps, self._execute_step)

    def _execute_step(self, step: Step) -> list[Any]:
        kind, fill = step
        if kind is Pipe.CALL:
            return [fill(None)]
        if kind is Pipe.RESULTS:  # on Celery's client, with its retry policy, as its writes
            backend: Any = self.app.backend
            replies: list[Any] = backend.ensure(self._execute_results, (fill,))
            return replies
        with self._step_pipeline(kind) as pipe:
            fill(pipe)
            replies = pipe.execute()
        return replies

    def _execute_results(self, fill: Any) -> list[Any]:
        backend: Any = self.app.backend
        with backend.client.pipeline(transaction=True) as pipe:
            fill(pipe)
            replies: list[Any] = pipe.execute()
        return replies

    def _step_pipeline(self, kind: Pipe) -> Any:
        return self.acks.step_pipeline(self.redis, kind)

    def submitting(
        self, plans: list[Plan], durable: bool = False, created_by: str | None = None
    ) -> Steps[Submitted]:
        """A submit, as the pipelines it needs (Steps): the same commands whether a sync
        client (run_steps) or an asyncio one (bo_queue.aio) executes them; `finish` what
        is left afterwards."""
        now = time.time()
        ordered = yield from self._dependency_order(plans)
        if durable:
            for plan in plans:
                plan.held = True  # held, due when it is due: sent below, or by a worker
        messages = {plan.id: self._message(plan, created_by) for plan in plans}
        waits: list[tuple[int, str]] = []

        def fill(pipe: Any) -> None:
            sends = Sends()  # the messages sent now, written by the records' script
            for plan in ordered:
                if not (plan.request.depends_on or plan.held or plan.queue == PULL_QUEUE):
                    self.send(plan.id, messages[plan.id], sends)  # kept until it starts
            self.records.create_many(pipe, [_record(p, now, created_by) for p in ordered],
                                     sends)
            for plan in ordered:  # after every record: a dependency may be in the batch
                req = plan.request
                if req.depends_on:
                    waits.append((len(pipe), plan.id))
                    self.records.wait_for(pipe, plan.id, req.depends_on, messages[plan.id])
                elif plan.held:
                    self.delays.hold(pipe, plan.id, plan.due_at or now, messages[plan.id])

        # One round trip, all or nothing: the records, the outbox entries and the messages
        # themselves (each message after its record) in one script; MULTI around it when
        # links, waits or holds add commands.
        alone = all(not (p.request.depends_on or p.held or p.request.tags or p.request.parent_id)
                    for p in plans)
        replies = yield Pipe.WRITE if alone else Pipe.ATOMIC, fill
        verdicts = {task_id: str(replies[index][0]) for index, task_id in waits}
        return Submitted(
            ids=[plan.id for plan in plans],
            released=int("queued" in verdicts.values() or durable),
            cancelled=[task_id for task_id, verdict in verdicts.items() if verdict == "cancelled"],
            offers=[(p.id, messages[p.id]) for p in plans
                    if p.queue == PULL_QUEUE and not p.held and not p.request.depends_on],
        )

    def finish(self, done: Submitted) -> None:
        """What a submit leaves after its writes: settle the dependents it released or
        cancelled, and offer pull tasks to their agents (bo_queue.core.pull)."""
        self.run_steps(self.finishing(done))

    def finishing(self, done: Submitted) -> Steps[None]:
        """`finish` as steps (bo_queue.aio awaits them)."""
        if done.released or done.cancelled:
            yield from self.settling(done.released, done.cancelled)
        if done.offers:  # the pull store's scripts, on the sync client (CALL)
            yield Pipe.CALL, lambda _: self._offer(done.offers)

    def _offer(self, offers: list[tuple[str, Message]]) -> None:
        for task_id, message in offers:
            self.send(task_id, message)

    def _dependency_order(self, plans: list[Plan]) -> Steps[list[Plan]]:
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

        def probe(pipe: Any) -> None:
            for task_id in outside + named:
                pipe.exists(self.keys.task(task_id))

        found = yield Pipe.READ, probe
        unknown = [d for d, ok in zip(outside, found, strict=False) if not ok]
        if unknown:
            raise DependencyError(f"unknown dependencies (no such task): {', '.join(unknown)}")
        taken = [i for i, ok in zip(named, found[len(outside):], strict=True) if ok]
        if taken:
            raise ValidationError(f"task ids already in use: {', '.join(taken)}")
        return [by_id[i] for layer in dependencies.layers(graph) for i in layer]

    def settle(self, released: int, cancelled: list[str]) -> None:
        """Ending a task settled its dependents: send those released, and wake anyone
        waiting on those cancelled (their record already says why)."""
        self.run_steps(self.settling(released, cancelled))

    def settling(self, released: int, cancelled: list[str]) -> Steps[None]:
        """`settle` as steps (bo_queue.aio awaits them)."""
        if cancelled:
            def reasons(pipe: Any) -> None:
                for task_id in cancelled:
                    pipe.hget(self.keys.task(task_id), "error")

            found = yield Pipe.READ, reasons
            yield from self._revoking([(task_id, reason or "dependency failed")
                                       for task_id, reason in zip(cancelled, found, strict=True)])
        if released:  # claims under a lease, then sends: a loop of the sync client's (CALL)
            yield Pipe.CALL, lambda _: self._send_released()

    def _send_released(self) -> None:
        while self.delays.release_due(self.send) >= RELEASE_BATCH:
            pass

    def _revoking(self, revoked: list[tuple[str, str]]) -> Steps[None]:
        """What Celery's `backend.mark_as_revoked(task_id, reason)` writes on its Redis
        backend, for each (task id, reason): the REVOKED meta that Celery encodes
        (ResultBackend.revoked), SET with the results' retention and PUBLISHed in one
        MULTI, unless the stored result is already a success (Celery's _store_result
        reads it first, and leaves a success alone). It wakes get() and then()."""
        backend: Any = self.app.backend
        writes = [backend.revoked(task_id, reason) for task_id, reason in revoked]

        def stored(pipe: Any) -> None:
            for key, _, _ in writes:
                pipe.get(key)

        current = yield Pipe.RESULTS, stored

        def store(pipe: Any) -> None:
            for (key, value, expires), raw in zip(writes, current, strict=True):
                if backend.succeeded(raw):
                    continue
                if expires:
                    pipe.setex(key, expires, value)
                else:
                    pipe.set(key, value)
                pipe.publish(key, value)

        yield Pipe.RESULTS, store

    def _message(self, plan: Plan, created_by: str | None = None) -> Message:
        req = plan.request
        return Message(
            handler=req.handler, payload=req.payload, queue=plan.queue,
            priority=req.priority.broker_priority, due_at=plan.due_at,
            expires_at=plan.expires_at, parent_id=req.parent_id,
            resources=req.resources.model_dump() if req.resources else None,
            study=plan.study, retry=req.retry.describe() if req.retry else None,
            time_limit=req.time_limit,
            kwargsrepr=kwargsrepr(name=req.name, description=req.description,
                                  metadata=req.metadata, created_by=created_by),
        )

    def send(self, task_id: str, message: Message, pipe: Any = None) -> None:
        """Queue one task message (new, held, released or lost ones): kept in the outbox
        until a worker starts it (bo_queue.core.outbox), and pushed on its queue's list as
        Celery's own message (Message.envelope), in one MULTI; on `pipe`, a pipeline of
        the caller's, instead (the submit's, after the record). A pull type's goes to the
        agents' store (bo_queue.core.pull), at once."""
        if message.queue == PULL_QUEUE:
            self.pull.offer(task_id, message)
            return
        if pipe is not None:
            self._push(pipe, task_id, message)
            return
        with self.redis.pipeline(transaction=True) as own:
            self._push(own, task_id, message)
            own.execute()

    def _push(self, pipe: Any, task_id: str, message: Message) -> None:
        self.outbox.keep(pipe, task_id, message)
        pipe.lpush(message.broker_list(self.keys.broker_prefix),
                   message.envelope(task_id, reply_to=self.app.thread_oid))

    @contextmanager
    def broker_errors(self) -> Iterator[None]:
        """Turn Redis and kombu connection errors into BrokerUnavailableError."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError) as exc:  # noqa: E501
            raise BrokerUnavailableError(
                f"Redis at {redact(self.settings.redis_url)} is unavailable: {exc}"
            ) from exc

    # -- handlers -----------------------------------------------------------------------

    def handler_queue(self, name: str) -> str | None:
        """The queue a handler declared; UnknownHandlerError if nobody declared it."""
        queue: str | None = self.handler_entry(name).get("queue")
        return queue

    def handler_entry(self, name: str) -> dict[str, Any]:
        """What is known of a handler (HandlerSpec.describe()); UnknownHandlerError if
        nobody declared it."""
        spec = registry.get(name)
        if spec is not None:
            return spec.describe()
        entry = self._directory.get(name)
        if entry is None and self._directory_stale():
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
            with self.broker_errors():
                serving = [card for card in self.heartbeats.live()
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
            with self.broker_errors():
                self.redis.sadd(self.keys.placed_queues, target)
            self._announced.add(target)
        return target

    def _directory_stale(self) -> bool:
        """Whether a handler not in the directory makes it be read again."""
        return time.monotonic() - self._directory_read_at > 0.5

    def checking(self, request: TaskRequest) -> Steps[Plan]:
        """`check` as steps: the handler directory re-read as a step when `check` would
        re-read it, and a check that reads the workers' heartbeats (`places`) as a CALL,
        so that an asyncio caller makes it in a worker thread."""
        yield from self.learning(request.handler)
        if self.places(request):
            [plan] = yield Pipe.CALL, lambda _: self.check(request)
            return plan  # type: ignore[no-any-return]
        return self.check(request)

    def learning(self, handler: str) -> Steps[None]:
        """The handler directory re-read, as a step, when `handler_entry(handler)` would
        re-read it: what checking a name of it then needs is in memory."""
        if (registry.get(handler) is None
                and handler not in self._directory and self._directory_stale()):
            [raw] = yield Pipe.READ, lambda pipe: pipe.hgetall(self.keys.handlers)
            self.learn_handlers(raw)

    def submitting_one(self, request: TaskRequest) -> Steps[str]:
        """A whole submit of one request as steps, from its check to what `finish` does:
        its task id."""
        plan = yield from self.checking(request)
        done = yield from self.submitting([plan])
        if done.released or done.cancelled or done.offers:
            yield from self.finishing(done)
        return done.ids[0]

    def places(self, request: TaskRequest | Mapping[str, Any]) -> bool:
        """Whether checking `request` reads the workers' heartbeats (or records a placed
        queue): a version, resources, or a handler that requires capabilities."""
        def field(name: str) -> Any:
            return request.get(name) if isinstance(request, Mapping) else getattr(request, name)

        if field("version") or field("resources"):
            return True
        try:
            entry = self.handler_entry(str(field("handler")))
        except UnknownHandlerError:  # check says so (check_all with the request's index)
            return False
        return bool(entry.get("requires") or entry.get("resources"))

    def handler_directory(self) -> dict[str, dict[str, Any]]:
        """The handler directory as last read (refresh_handlers re-reads it)."""
        return dict(self._directory)

    def forget_handlers(self) -> None:
        """Make the next unknown handler re-read the directory at once (a new declaration)."""
        self._directory_read_at = -math.inf

    def refresh_handlers(self) -> dict[str, dict[str, Any]]:
        """Re-read the handler directory that workers publish when they start."""
        with self.broker_errors():
            raw = self.redis.hgetall(self.keys.handlers)
        return self.learn_handlers(raw)

    def learn_handlers(self, raw: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
        """Take the handler directory as read from Redis (HGETALL of `keys.handlers`)."""
        self._directory = {str(name): json.loads(spec) for name, spec in raw.items()}
        self._directory_read_at = time.monotonic()
        return dict(self._directory)

    # -- looking and cancelling ---------------------------------------------------------

    def handle(self, task_id: str) -> TaskHandle:
        known_id(task_id)
        with self.broker_errors():
            if not self.records.exists(task_id):
                raise UnknownTaskError(task_id)
        return TaskHandle(self, task_id)

    def info(self, task_id: str) -> TaskInfo:
        known_id(task_id)
        with self.broker_errors():
            return self._info(task_id)

    def _info(self, task_id: str) -> TaskInfo:
        record = self.records.get(task_id)
        if record is None:
            raise UnknownTaskError(task_id)
        return with_result(record, None if record.state.terminal
                           else self.results.fetch(task_id))

    def cancel(
        self, task_id: str, *, terminate: bool = False, reason: str = "cancelled"
    ) -> TaskState:
        """Cancel a task, persistently. A queued or delayed task never starts; a running
        one sees `ctx.cancelled` (or is killed with terminate=True). Its subtasks (ctx.spawn,
        parent_id), to any depth, are cancelled with it, and so are the tasks that depend
        on it. Returns the task's state after the call: CANCELLED, RUNNING (stopping), or
        the state it had already ended in.
        """
        with self.broker_errors():
            return self.run_steps(self.cancelling(task_id, terminate=terminate, reason=reason))

    def cancelling(
        self, task_id: str, *, terminate: bool = False, reason: str = "cancelled"
    ) -> Steps[TaskState]:
        """`cancel` as steps (bo_queue.aio awaits them)."""
        known_id(task_id)
        prior, after = yield from self._cancelling(task_id, terminate, reason)
        if not prior.terminal:  # a finished parent's live subtasks are theirs to finish
            yield from self._cancelling_descendants(task_id, terminate)
        return after

    def _cancelling_descendants(self, task_id: str, terminate: bool) -> Steps[None]:
        for child in (yield from self.records.descending(task_id)):
            try:
                yield from self._cancelling(child, terminate, f"ancestor {task_id} cancelled")
            except UnknownTaskError:  # past its retention: nothing left to cancel
                continue

    def _cancelling(
        self, task_id: str, terminate: bool, reason: str
    ) -> Steps[tuple[TaskState, TaskState]]:
        """(state before, state after) of a cancellation."""
        prior, settled = yield from self.records.cancelling(task_id, reason)
        if settled.released or settled.cancelled:  # what RecordStore.cancel settles
            yield from self.settling(settled.released, settled.cancelled)
        if prior is None:
            raise UnknownTaskError(task_id)
        if prior.terminal:
            return prior, prior
        if prior is TaskState.RUNNING:
            if terminate:  # Celery's remote control, a kombu broadcast to the workers: CALL
                yield Pipe.CALL, lambda _: self.app.control.revoke(
                    task_id, terminate=True, signal="SIGTERM")
            return prior, TaskState.RUNNING
        yield Pipe.PLAIN, lambda pipe: self.delays.dropping(pipe, task_id)
        yield from self._revoking([(task_id, reason)])  # wakes get() and then()
        return prior, TaskState.CANCELLED

    def cancel_tag(self, tag: str, *, terminate: bool = False) -> list[str]:
        """Cancel every unfinished task carrying `tag`; returns the ids it cancelled."""
        with self.broker_errors():
            return self.run_steps(self.cancelling_tag(tag, terminate=terminate))

    def cancelling_tag(self, tag: str, *, terminate: bool = False) -> Steps[list[str]]:
        """`cancel_tag` as steps (bo_queue.aio awaits them)."""
        if not isinstance(tag, str) or not tag or not encodable(tag):
            raise ValidationError(f"a tag is a non-empty UTF-8 string, not {shown(tag)}")
        cancelled = []
        tagged = sorted((yield from self.records.tagging(tag)))
        for task_id in tagged:
            try:
                prior, _ = yield from self._cancelling(task_id, terminate,
                                                       f"tag {tag!r} cancelled")
                if not prior.terminal:
                    yield from self._cancelling_descendants(task_id, terminate)
            except UnknownTaskError:  # its record expired; nothing left to cancel
                continue
            if not prior.terminal:
                cancelled.append(task_id)
        return cancelled

    # -- lineage and dependencies -------------------------------------------------------

    def children(self, task_id: str) -> list[TaskInfo]:
        """The direct subtasks of a task (ctx.spawn or parent_id), oldest first."""
        known_id(task_id)
        with self.broker_errors():
            if not self.records.exists(task_id):
                raise UnknownTaskError(task_id)
            return self.records.children(task_id)

    def tree(self, task_id: str, max_depth: int = 20) -> TaskTree:
        """The task and its subtasks, to `max_depth` levels."""
        known_id(task_id)
        with self.broker_errors():
            tree = self.records.tree(task_id, max_depth)
        if tree is None:
            raise UnknownTaskError(task_id)
        return tree

    def graph(self, task_ids: Iterable[str]) -> DependencyGraph:
        """The dependency graph around these tasks: them, what they depend on and what
        depends on them, transitively. `.to_dot()` renders it for Graphviz."""
        ids = [known_id(task_id) for task_id in task_ids]
        with self.broker_errors():
            return dependencies.read_graph(self.records, ids)

    def plan(self, task_ids: Iterable[str]) -> list[list[str]]:
        """The execution plan of these tasks: topological layers, each of tasks that can
        run together once the layers before it are done, e.g. [[A], [B, C], [D]]."""
        ids = list(dict.fromkeys(known_id(task_id) for task_id in task_ids))
        with self.broker_errors():
            graph = dependencies.read_graph(self.records, ids, expand=False)
        return dependencies.layers({i: graph.depends_on.get(i, []) for i in ids})


def _record(plan: Plan, now: float, created_by: str | None) -> dict[str, Any]:
    """The record fields of a new task."""
    req = plan.request
    waiting = bool(req.depends_on)
    return {
        "id": plan.id, "handler": req.handler, "queue": plan.queue,
        "priority": req.priority, "tags": req.tags, "parent_id": req.parent_id,
        "state": TaskState.PENDING if plan.held or waiting else TaskState.QUEUED,
        "created_at": now, "due_at": plan.due_at, "expires_at": plan.expires_at,
        "depends_on": req.depends_on or None,
        "on_dependency_failure": req.on_dependency_failure if waiting else None,
        "name": req.name, "description": req.description,
        "metadata": req.metadata, "created_by": created_by,
        "retry": req.retry.describe() if req.retry else None,
        "time_limit": req.time_limit,
    }


def request_of(
    handler: str, payload: Mapping[str, Any] | None = None, **options: Any
) -> TaskRequest:
    """The TaskRequest of a submit's arguments (Core.submit's), or ValidationError."""
    for name in ("metadata", "retry"):  # a mapping as given, as the model takes it
        if isinstance(options.get(name), Mapping):
            options[name] = dict(options[name])
    return task_request(handler=handler, payload=payload if payload is not None else {},
                        **options)


def batch_of(requests: object) -> list[TaskRequest | Mapping[str, Any]]:
    """The requests of a submit_many, or ValidationError if it was not given a batch."""
    if not isinstance(requests, Iterable) or isinstance(requests, str | bytes | Mapping):
        raise ValidationError(
            f"submit_many takes an iterable of requests, not {type(requests).__name__}"
        )
    return list(requests)


def with_result(record: TaskInfo, meta: dict[str, Any] | None) -> TaskInfo:
    """A record that has not ended yet, with the stored result over it: the result backend
    learns that a task ended a moment before the worker updates the record, and the
    stored result wins, so get() and the state agree."""
    if meta is None or record.state.terminal:
        return record
    return TaskInfo.model_validate({**record.model_dump(), **final_fields(meta)})
