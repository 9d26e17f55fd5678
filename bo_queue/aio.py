"""AsyncBOQueue: the producer facade for asyncio services (FastAPI, aiohttp, ...).

Each call is the sync facade's own, written once as sans-IO steps (bo_queue.core.steps:
the pipelines it needs, and what it makes of their replies), and driven here on a
`redis.asyncio` client: a submit (Core.check, then Core.submitting), a cancel
(Core.cancelling, cancelling_tag), the listings (Monitor.listing, failing), a retry
(Monitor.retrying) and the reads: the same validation, errors, records and commands,
on connections held between calls (bo_queue.core.aio_redis: redis.asyncio's pool alone
cost more than the round trip).
Results are awaited on one shared pub/sub connection, so hundreds of `get()`s wait on
the loop, with no thread each.

What is no Redis command of ours is a CALL step, made in a worker thread
(asyncio.to_thread) so that it never blocks the loop: Celery's remote control (a kombu
broadcast) for cancel(terminate=True) of a running task, the check of a submit whose
placement reads the workers' heartbeats, and the sync facade's lease loop that sends
dependents a cancel or a submit released, and pull offers. The studies' calls
(AsyncStudies) are steps too: Ax runs on the workers, never in the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from bo_queue import registry
from bo_queue.client import BOQueue
from bo_queue.config import Settings
from bo_queue.core.aio_redis import HeldConnections, HeldPipeline, async_client
from bo_queue.core.handle import RECORD_RECHECK_S, Progress
from bo_queue.core.kernel import Pipe, Step, Steps, batch_of, request_of, with_result
from bo_queue.core.records import RecordStore, TaskInfo, derived_state
from bo_queue.core.requests import Plan, TaskRequest
from bo_queue.core.results import RECHECK_S, outcome, ready_meta
from bo_queue.errors import (
    ResultTimeoutError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    UnknownTaskError,
)
from bo_queue.states import TaskState
from bo_queue.studies.manager import ended, step_failed
from bo_queue.validation import known_id

if TYPE_CHECKING:
    from bo_queue.studies.models import (
        Choice,
        Objective,
        Range,
        Strategy,
        Study,
        StudySpec,
        Trial,
    )

__all__ = ["AsyncBOQueue", "AsyncStudies", "AsyncTaskHandle"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncBOQueue:
    """The asyncio twin of BOQueue's producer calls:

        async with AsyncBOQueue(redis_url="redis://127.0.0.1:6379/0", namespace="boq") as aq:
            h = await aq.submit("reports.build", {"x": 1}, priority="high")
            result = await h.get(timeout=10)

    Takes what BOQueue takes (`settings`, or options and BO_QUEUE_* variables).
    """

    def __init__(
        self, redis_url: str | None = None, namespace: str | None = None, *,
        settings: Settings | None = None, **options: Any,
    ) -> None:
        self._setup(BOQueue(redis_url, namespace, settings=settings, **options), owns_sync=True)

    def _setup(self, sync: BOQueue, *, owns_sync: bool, client: aioredis.Redis | None = None,
               results_client: aioredis.Redis | None = None) -> None:
        self.sync, self._owns_sync = sync, owns_sync
        self.settings, self.keys = self.sync.settings, self.sync.keys
        connect = self.settings.connect_timeout_s
        self.redis = client or async_client(self.settings, self.settings.redis_url,
                                       decode_responses=True, socket_timeout=max(connect, 10.0))
        # Celery's result backend, under its own key scheme (the sync waiter's prefix)
        self.results = AsyncResults(
            results_client or async_client(self.settings, self.settings.results_url),
            self.sync.results.prefix)
        self.studies = AsyncStudies(self)
        self._held = HeldConnections(self.redis)

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Settings from BO_QUEUE_* environment variables (see Settings)."""
        return cls(settings=Settings.load(**overrides))

    @classmethod
    def over(cls, sync: BOQueue, *, client: aioredis.Redis | None = None,
             results_client: aioredis.Redis | None = None) -> Self:
        """An asyncio facade on an existing BOQueue (its settings, keys, handler directory),
        with asyncio clients of its own (`client`, text, and `results_client`, bytes, for
        tests). close() closes those and leaves `sync` open: its owner closes it. The
        clients connect on first use, on the loop that awaits them."""
        aq = cls.__new__(cls)
        cls._setup(aq, sync, owns_sync=False, client=client, results_client=results_client)
        return aq

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection (the shared result listener's too; the sync facade's
        unless it was given to `over`)."""
        await self.results.close()
        await self._held.close()
        await self.redis.aclose()
        if self._owns_sync:
            self.sync.close()

    # -- submitting -------------------------------------------------------------------

    async def submit(
        self, handler: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncTaskHandle:
        """BOQueue.submit, awaited: the same options, validation and errors."""
        request = request_of(handler, payload, **options)
        [plan] = await self._check([request], single=True)
        [handle] = await self._submit([plan])
        return handle

    async def submit_many(
        self, requests: Iterable[TaskRequest | Mapping[str, Any]], *, durable: bool = False,
        created_by: str | None = None,
    ) -> list[AsyncTaskHandle]:
        """BOQueue.submit_many, awaited: one round trip for the batch."""
        plans = await self._check(batch_of(requests))
        return await self._submit(plans, durable, created_by)

    async def _check(self, requests: list[TaskRequest | Mapping[str, Any]],
                     single: bool = False) -> list[Plan]:
        """The sync facade's `check` of a submit or `check_all` of a batch, on the loop:
        the handler directory is read here, asynchronously, so that checking does no I/O.
        A request whose placement reads the workers' heartbeats (a version, resources,
        capabilities) is checked in a worker thread."""
        names = {r.handler if isinstance(r, TaskRequest) else r.get("handler") for r in requests}
        if any(isinstance(n, str) and not self._known(n) for n in names):
            with self.sync.broker_errors():
                self.sync.learn_handlers(await self.redis.hgetall(self.keys.handlers))
        def check() -> list[Plan]:
            if single:  # as BOQueue.submit: its errors name no index
                return [self.sync.check(requests[0])]  # type: ignore[arg-type]
            return self.sync.check_all(requests)

        if any(self.sync.places(r) for r in requests):
            return await asyncio.to_thread(check)
        return check()

    def _known(self, handler: str) -> bool:
        return registry.get(handler) is not None or handler in self.sync.handler_directory()

    async def _submit(
        self, plans: list[Plan], durable: bool = False, created_by: str | None = None
    ) -> list[AsyncTaskHandle]:
        done = await self.run_steps(self.sync.submitting(plans, durable, created_by))
        if done.released or done.cancelled or done.offers:
            await self.run_steps(self.sync.finishing(done))  # dependents and pull offers
        return [AsyncTaskHandle(self, task_id) for task_id in done.ids]

    async def run_steps(self, steps: Steps[T]) -> T:
        """Core.run_steps (bo_queue.core.steps.drive) on the asyncio clients: each
        pipeline the steps ask for, an error raised inside them where they asked."""
        with self.sync.broker_errors():
            try:
                step = next(steps)
                while True:
                    try:
                        replies = await self._execute(step)
                    except BaseException as exc:  # a cancel of the awaiting task too
                        step = steps.throw(exc)
                    else:
                        step = steps.send(replies)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]

    async def _execute(self, step: Step) -> list[Any]:
        kind, fill = step
        if kind is Pipe.CALL:  # no Redis command of ours (see the module's docstring)
            return [await asyncio.to_thread(fill, None)]
        if kind is Pipe.RESULTS:  # Celery's result backend, as its own writes: MULTI
            pipe = self.results.redis.pipeline(transaction=True)
        elif kind in (Pipe.READ, Pipe.PLAIN) or not self.sync.acks.enabled:
            pipe = self._held.pipeline(transaction=kind is Pipe.ATOMIC)
        else:  # a write step waits for the replicas (replica_acks)
            pipe = self.sync.acks.async_pipeline(self.redis, transaction=kind is Pipe.ATOMIC)
        fill(pipe)
        if isinstance(pipe, HeldPipeline):
            return await self._held.execute(pipe)
        async with pipe:
            replies: list[Any] = await pipe.execute()
        return replies

    # -- looking ------------------------------------------------------------------------

    def handle(self, task_id: str) -> AsyncTaskHandle:
        """A handle on a task by id (not checked: `await h.info()` raises if unknown)."""
        return AsyncTaskHandle(self, known_id(task_id))

    async def info(self, task_id: str) -> TaskInfo:
        """BOQueue.info: the record (with the stored result over it, as there)."""
        known_id(task_id)
        with self.sync.broker_errors():
            pipe = self._held.pipeline(transaction=False)
            self.sync.records.read(pipe, task_id)
            record = RecordStore.from_replies(await self._held.execute(pipe))
            if record is None:
                raise UnknownTaskError(task_id)
            if record.state.terminal:
                return record
            return with_result(record, await self.results.fetch(task_id))

    async def state(self, task_id: str) -> TaskState | None:
        """Just the state (as RecordStore.state); None for an unknown task."""
        with self.sync.broker_errors():
            state, expires = await self.redis.hmget(self.keys.task(task_id),
                                                    ["state", "expires_at"])
        if state is None:
            return None
        return derived_state(TaskState(str(state)), None if expires is None else str(expires))

    # -- cancelling, listings, retry: the sync facade's steps -------------------------

    async def cancel(self, task_id: str, *, terminate: bool = False,
                     reason: str = "cancelled") -> TaskState:
        """BOQueue.cancel, awaited (Core.cancelling). Only terminate=True's kill of a
        running task, a broadcast of Celery's remote control, goes to a worker thread."""
        return await self.run_steps(self.sync.cancelling(task_id, terminate=terminate,
                                                    reason=reason))

    async def cancel_tag(self, tag: str, *, terminate: bool = False) -> list[str]:
        """BOQueue.cancel_tag, awaited (Core.cancelling_tag)."""
        return await self.run_steps(self.sync.cancelling_tag(tag, terminate=terminate))

    async def tasks(self, state: TaskState | str | None = None,
                    **filters: Any) -> list[TaskInfo]:
        """BOQueue.tasks, awaited (Monitor.listing)."""
        return await self.run_steps(self.sync.monitor.listing(state, **filters))

    async def failed(self, limit: int = 100) -> list[TaskInfo]:
        """BOQueue.failed, awaited (Monitor.failing)."""
        return await self.run_steps(self.sync.monitor.failing(limit))

    async def retry(self, task_id: str) -> AsyncTaskHandle:
        """BOQueue.retry, awaited (Monitor.retrying)."""
        return AsyncTaskHandle(self, await self.run_steps(self.sync.monitor.retrying(task_id)))


def _honour_cancel() -> None:
    """Raise the CancelledError of a cancel that an await below swallowed, before a wait
    loop goes round again. On Python 3.11, asyncio.wait_for returns normally when a
    cancel arrives as what it waits for completes (CPython gh-86296, gone in 3.12), and
    redis.asyncio sends every command through wait_for when it has a socket_timeout: a
    `get()` cancelled then would wait on for ever. The task still counts the request."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class AsyncTaskHandle:
    """A submitted task, by id, for asyncio: `await h.get(timeout=)`, `h.state()`,
    `h.ready()`, `h.info()`, `h.progress()`, `h.cancel()`. Cancelling the coroutine
    awaiting `get()` stops the wait, not the task."""

    __slots__ = ("_aq", "id")

    def __init__(self, aq: AsyncBOQueue, task_id: str) -> None:
        self._aq = aq
        self.id = task_id

    def __repr__(self) -> str:
        return f"AsyncTaskHandle({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def info(self) -> TaskInfo:
        return await self._aq.info(self.id)

    async def state(self) -> TaskState:
        return (await self.info()).state

    async def ready(self) -> bool:
        """True once the task has ended, whichever way."""
        return (await self.state()).terminal

    async def progress(self) -> Progress:
        with self._aq.sync.broker_errors():
            fraction, message = await self._aq.redis.hmget(
                self._aq.keys.task(self.id), ["progress", "progress_message"])
        return Progress(float(fraction or 0.0), str(message or ""))

    async def cancel(self, terminate: bool = False) -> TaskState:
        return await self._aq.cancel(self.id, terminate=terminate)

    async def get(self, timeout: float | None = None) -> Any:
        """TaskHandle.get, awaited: the handler's return value, or the same errors
        (TaskFailedError, TaskTimeoutError, TaskCancelledError, TaskExpiredError;
        ResultTimeoutError once `timeout` passes, which leaves the task alone)."""
        aq = self._aq
        deadline = None if timeout is None else time.monotonic() + timeout
        with aq.sync.broker_errors():
            meta = await aq.results.fetch(self.id)
            while meta is None:
                _honour_cancel()
                # A task that never ran has no stored result; its record says how it
                # ended (re-read now and then, as TaskHandle.get does).
                state = await aq.state(self.id)
                if state is TaskState.EXPIRED:
                    raise TaskExpiredError(self.id, f"task {self.id} expired before it started")
                if state is TaskState.CANCELLED:
                    [reason] = await aq.redis.hmget(aq.keys.task(self.id), ["error"])
                    raise TaskCancelledError(self.id,
                                             str(reason or "cancelled before it started"))
                left = RECORD_RECHECK_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise ResultTimeoutError(self.id, timeout or 0.0)
                meta = await aq.results.wait(self.id, min(left, RECORD_RECHECK_S))
        return outcome(self.id, meta)


class AsyncResults:
    """Results from Celery's Redis backend, for asyncio: a GET of the stored result, or
    a wait on its pub/sub channel. One pub/sub connection serves every waiter of the
    facade: one reader task hands each result published to the futures waiting on it."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.redis, self.prefix = client, prefix
        self._waiting: dict[str, set[asyncio.Future[dict[str, Any]]]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None

    def key(self, task_id: str) -> str:
        return self.prefix + task_id

    async def fetch(self, task_id: str) -> dict[str, Any] | None:
        """The stored meta if the task is finished, else None."""
        return ready_meta(await self.redis.get(self.key(task_id)))

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The meta once the task is finished, or None after `timeout` seconds (the caller
        has looked at the stored result already)."""
        deadline = time.monotonic() + timeout
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(task_id, set())
        waiters.add(future)
        try:
            if len(waiters) == 1:
                await self._subscribe(task_id)
            while True:
                _honour_cancel()
                # SUBSCRIBE may take effect after a result was published, and the GET
                # goes on another connection: look at the stored result now and then.
                meta = await self.fetch(task_id)
                left = deadline - time.monotonic()
                if meta is not None or left <= 0:
                    return meta
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), min(left, RECHECK_S))
        finally:  # a cancelled wait too
            waiters.discard(future)
            if not waiters:
                del self._waiting[task_id]
                if self._pubsub is not None:
                    with contextlib.suppress(redis.exceptions.RedisError):
                        await self._pubsub.unsubscribe(self.key(task_id))

    async def _subscribe(self, task_id: str) -> None:
        if self._pubsub is None:
            self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.key(task_id))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="bo-queue-results")

    async def _read(self) -> None:
        while self._waiting:
            try:
                message = await self._pubsub.get_message(timeout=RECHECK_S)
            except redis.exceptions.RedisError as exc:  # waiters fall back on their GETs
                log.warning("result listener lost Redis (%r); retrying", exc)
                await asyncio.sleep(RECHECK_S)
                continue
            if message is None:
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            meta = ready_meta(message["data"])
            for future in self._waiting.get(channel[len(self.prefix):], ()):
                if meta is not None and not future.done():
                    future.set_result(meta)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self.redis.aclose()


class AsyncStudies:
    """The ask/tell side of studies for asyncio: BOQueue.studies' own calls, written once
    as steps (StudyManager.creating, asking, reporting, ...) and awaited here on the
    asyncio client; a suggest's answer awaited on the shared pub/sub connection. No thread:
    Ax runs on the workers, and nothing here imports it."""

    def __init__(self, aq: AsyncBOQueue) -> None:
        self._aq = aq
        self._manager = aq.sync.studies

    async def create(
        self,
        name: str,
        parameters: Sequence[Range | Choice],
        objectives: Sequence[Objective],
        strategy: Strategy | None = None,
        evaluator: str | None = None,
        **options: Any,
    ) -> Study:
        """StudyManager.create (its keyword options: parameter_constraints,
        outcome_constraints, evaluator_options, description, metadata, warm_start_from)."""
        return await self._aq.run_steps(self._manager.creating(
            name, parameters, objectives, strategy, evaluator, **options))

    async def create_from_spec(self, spec: StudySpec | Mapping[str, Any], **options: Any
                               ) -> Study:
        """StudyManager.create_from_spec."""
        return await self._aq.run_steps(self._manager.creating_from_spec(spec, **options))

    async def get(self, study_id: str) -> Study:
        """StudyManager.get."""
        return await self._aq.run_steps(self._manager.store.studying(study_id))

    async def trials(self, study_id: str) -> list[Trial]:
        """The study's trials, by index (StudyManager.trials without its filter)."""
        await self.get(study_id)  # StudyNotFoundError
        return await self._aq.run_steps(self._manager.store.trials_reading(study_id))

    async def suggest(self, study_id: str, count: int = 1, timeout: float | None = 300
                      ) -> list[Trial]:
        """StudyManager.suggest: the step's answer awaited, with no thread."""
        step = await self._aq.run_steps(self._manager.asking(study_id, count, timeout))
        try:
            indices: list[int] = await self._aq.handle(step).get(timeout=timeout)
        except TaskFailedError as exc:
            raise step_failed(exc) from exc
        return await self._aq.run_steps(self._manager.store.trials_reading(study_id, indices))

    async def report(self, study_id: str, index: int, values: Mapping[str, Any],
                     metadata: Mapping[str, Any] | None = None) -> bool:
        """StudyManager.report."""
        return await self._aq.run_steps(self._manager.reporting(study_id, index, values, metadata))

    async def report_failure(self, study_id: str, index: int, reason: str = "") -> bool:
        """StudyManager.report_failure."""
        return await self._aq.run_steps(self._manager.reporting_failure(study_id, index, reason))

    async def report_intermediate(self, study_id: str, trial_index: int, step: int,
                                  values: Mapping[str, Any]) -> bool:
        """StudyManager.report_intermediate: True when the trial should stop now."""
        return await self._aq.run_steps(
            self._manager.reporting_intermediate(study_id, trial_index, step, values))

    async def best(self, study_id: str) -> Trial | None:
        """StudyManager.best."""
        return await self._aq.run_steps(self._manager.best_reading(study_id))

    async def wait(self, study_id: str, timeout: float = 600, poll_s: float = 0.25) -> Study:
        """StudyManager.wait, polling on the loop."""
        deadline = time.monotonic() + timeout
        while not ended(study := await self.get(study_id), deadline, timeout):
            await asyncio.sleep(poll_s)
        return study
