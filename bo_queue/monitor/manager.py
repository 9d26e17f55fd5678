"""`bq.monitor`: queues, workers, metrics and state-change events, read from Redis.

Queue lengths come from kombu's own lists (one per priority step), workers from the
heartbeat every bo_queue worker writes once a second (a worker that stops writing is gone
after `heartbeat_timeout_s`; `inspect=True` adds Celery's remote-control view, with a
timeout), and metrics and subscriptions from the event stream that every state change
appends to (bo_queue.core.events).
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel, ConfigDict

from bo_queue.core.connections import redis_client
from bo_queue.core.events import Event, parse_event, stream_entries
from bo_queue.core.handle import TaskHandle
from bo_queue.core.kernel import request_of
from bo_queue.core.message import Message, envelope_task_id
from bo_queue.core.records import TaskInfo
from bo_queue.core.results import ready_meta
from bo_queue.core.steps import Pipe, Steps
from bo_queue.errors import StudyNotFoundError, UnknownTaskError, ValidationError
from bo_queue.monitor.metadata import NamespaceMetadata
from bo_queue.monitor.webhooks import Webhooks
from bo_queue.monitor.webhooks import WebhookSink as WebhookSink  # where it used to be
from bo_queue.states import Priority, TaskState
from bo_queue.studies import scoring
from bo_queue.validation import utc

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core
    from bo_queue.studies.manager import StudyManager

log = logging.getLogger(__name__)

SUMMARY_PAGE = 500  # task ids read from a state index at a time (Monitor.summary)


class QueueStats(BaseModel):
    queue: str
    priority: Priority
    length: int
    oldest_age_s: float | None = None  # how long the next task to run has waited
    paused: bool = False  # bq.pause_queue: no worker starts its tasks (they stay QUEUED)
    held: int = 0  # of its tasks, how many a worker took and held back while it is paused


class WorkerStatus(BaseModel):
    hostname: str
    queues: list[str] = []
    concurrency: int | None = None
    active: int = 0  # tasks running now
    pid: int | None = None
    started_at: datetime | None = None
    last_heartbeat: datetime
    seconds_since_heartbeat: float
    inspected: dict[str, Any] | None = None  # Celery inspect, with inspect=True
    capabilities: list[str] = []
    offers: dict[str, float] = {}  # what it offers to tasks that state resources
    versions: dict[str, str] = {}  # handler -> version, for versioned handlers


class HandlerMetrics(BaseModel):
    handler: str
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    retried: int = 0  # retries scheduled
    started: int = 0  # runs started (first runs, retries and redeliveries)
    throughput_per_min: float = 0.0  # tasks that ended (succeeded or failed) per minute
    mean_duration_s: float | None = None
    p95_duration_s: float | None = None
    failure_rate: float | None = None  # failed / (succeeded + failed)
    retry_rate: float | None = None  # retries per task that ended


class StudyMetrics(BaseModel):
    id: str
    name: str
    status: str
    completed_trials: int
    trials_per_min: float
    best_value: float | None = None  # of its best trial (bo_queue.studies.scoring)


class Metrics(BaseModel):
    window_s: float
    complete: bool = True  # False: the capped event stream no longer covers the whole window
    at: datetime
    handlers: dict[str, HandlerMetrics]
    total: HandlerMetrics
    running: int  # tasks whose record says RUNNING
    concurrent: int  # tasks the live workers report running
    workers: int
    studies_by_status: dict[str, int]
    studies: list[StudyMetrics]


class Summary(BaseModel):
    """The tasks now, by state and by handler (`Monitor.summary`)."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    total: int  # tasks in the per-state indexes
    by_state: dict[str, int]  # every TaskState, zeros included
    by_handler: dict[str, dict[str, int]]  # handler -> state -> live records (no zeros)


def _held_counts(queues: Sequence[str], held: Sequence[list[str]]) -> dict[tuple[str, int], int]:
    """(queue, broker priority) -> how many messages workers held back from it while its
    configured queue is paused, from each queue's held messages."""
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for base, raws in zip(queues, held, strict=True):
        for raw in raws:
            try:
                message = Message.decode(raw)
            except ValidationError:
                continue
            level = Priority.from_broker(message.priority).broker_priority
            counts[(message.queue or base, level)] += 1
    return counts


def _task_filter(
    queue: str | None, handler: str | None, name: str | None,
    metadata: Mapping[str, Any] | None,
) -> Callable[[TaskInfo], bool]:
    """The test a listed record passes: each filter given is equal (None: not filtered)."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValidationError(f"metadata filters by a mapping, not {type(metadata).__name__}")
    wanted = dict(metadata or {})

    def fits(info: TaskInfo) -> bool:
        found = info.metadata or {}
        return ((queue is None or info.queue == queue)
                and (handler is None or info.handler == handler)
                and (name is None or info.name == name)
                and all(key in found and _equal(found[key], value)
                        for key, value in wanted.items()))

    return fits


def _equal(found: Any, wanted: Any) -> bool:
    """As JSON compares them: true is not 1 (Python says it is)."""
    return found == wanted and isinstance(found, bool) == isinstance(wanted, bool)


class _IndexPages:
    """A state index read newest first, a page of PAGE ids at a time (Monitor.listing)."""

    PAGE = 500

    def __init__(self, key: str) -> None:
        self.key = key
        self.items: deque[tuple[float, str]] = deque()  # (-score, id) read, not yet taken
        self.offset = 0
        self.done = False  # its last page is read


def _reading(pages: list[_IndexPages], low: str | float) -> Steps[None]:
    """The next page of each index, in one step."""
    def fill(pipe: Any) -> None:
        for index in pages:
            pipe.zrevrangebyscore(index.key, "+inf", low, start=index.offset,
                                  num=_IndexPages.PAGE, withscores=True)

    replies = yield Pipe.READ, fill
    for index, page in zip(pages, replies, strict=True):
        index.items.extend((-float(score), str(task_id)) for task_id, score in page)
        index.offset += _IndexPages.PAGE
        index.done = len(page) < _IndexPages.PAGE


def _percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


class Monitor:
    """`bq.monitor`: what is queued, who works, how it went (metrics), what changed
    (events, webhooks), and the task listings and the failed-task registry."""

    def __init__(self, bq: Core, studies: Callable[[], StudyManager]) -> None:
        self.bq = bq
        self.studies = studies  # built on first use: listing studies needs it
        self._meta: NamespaceMetadata | None = None
        self._webhooks: Webhooks | None = None

    # -- queues and workers -------------------------------------------------------------

    def queues(self) -> list[QueueStats]:
        """Every configured queue, and every capability or version queue a task was sent
        to (bo_queue.core.placement), per priority: its length and the age of its oldest task."""
        bq, prefix = self.bq, self.bq.keys.broker_prefix
        with bq.broker_errors():
            placed = sorted(str(q) for q in bq.redis.smembers(bq.keys.placed_queues))
        names = [*bq.settings.queues, *(q for q in placed if q not in bq.settings.queues)]
        cells = [(q, p) for q in names for p in sorted(Priority, reverse=True)]
        keys = [prefix + q + (f":{p.broker_priority}" if p.broker_priority else "")
                for q, p in cells]
        with bq.broker_errors(), bq.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
                pipe.lindex(key, -1)  # kombu LPUSHes and BRPOPs: the oldest is last
            pipe.smembers(bq.keys.paused_queues)
            for queue in bq.settings.queues:
                pipe.hvals(bq.keys.queue_held(queue))
            everything = pipe.execute()
        replies, paused = everything[:len(keys) * 2], everything[len(keys) * 2]
        held = everything[len(keys) * 2 + 1:]
        oldest = [None if raw is None else envelope_task_id(raw) for raw in replies[1::2]]
        with bq.broker_errors():
            queued_at = self._queued_at([i for i in oldest if i])
        held_by = _held_counts(bq.settings.queues, held)
        now = time.time()
        out = []
        for (queue, priority), length, task_id in zip(cells, replies[::2], oldest, strict=True):
            since = queued_at.get(task_id) if task_id else None
            base = queue.split(".")[0]  # a capability or version queue pauses with its queue
            out.append(QueueStats(queue=queue, priority=priority, length=int(length),
                                  oldest_age_s=now - since if length and since else None,
                                  paused=base in paused,
                                  held=held_by.get((queue, priority.broker_priority), 0)))
        return out

    def _queued_at(self, task_ids: list[str]) -> dict[str, float]:
        """When each task became ready to run: the latest of reaching its current state
        (queued, released by its dependencies, retrying), its due time and its next
        attempt. A countdown or a backoff is not time spent waiting in the queue."""
        infos = [i for i in self.bq.records.get_many(task_ids) if i is not None]
        with self.bq.redis.pipeline(transaction=False) as pipe:
            for info in infos:
                pipe.zscore(self.bq.keys.state_index(info.state), info.id)
            scores = pipe.execute()
        out: dict[str, float] = {}
        for info, score in zip(infos, scores, strict=True):
            moments = [info.created_at, info.due_at, info.next_attempt_at]
            stamps = [m.timestamp() for m in moments if m is not None]
            out[info.id] = max([*stamps, *([float(score)] if score is not None else [])])
        return out

    def workers(self, *, inspect: bool = False, timeout: float = 1.0) -> list[WorkerStatus]:
        """Workers whose heartbeat is fresher than `heartbeat_timeout_s`. With inspect=True,
        each also carries Celery's `inspect` view (asked of all at once, `timeout` s)."""
        bq = self.bq
        with bq.broker_errors():
            cards = bq.heartbeats.cards()
        now = time.time()
        out, dead = [], []
        for hostname, card in sorted(cards.items()):
            if card is None or not bq.heartbeats.alive(card, now):
                if bq.heartbeats.gone(card, now):
                    dead.append(hostname)  # long gone (killed): forget it
                continue
            started = card.get("started_at")
            out.append(WorkerStatus(
                hostname=hostname, queues=card.get("queues", []),
                concurrency=card.get("concurrency"), active=card.get("active", 0),
                pid=card.get("pid"), last_heartbeat=utc(card["at"]),
                started_at=utc(started) if started else None,
                seconds_since_heartbeat=now - card["at"],
                capabilities=card.get("capabilities", []), offers=card.get("offers", {}),
                versions=card.get("versions", {}),
            ))
        with bq.broker_errors():
            bq.heartbeats.forget(dead)
        if inspect and out:
            views = self._inspect([w.hostname for w in out], timeout)
            out = [w.model_copy(update={"inspected": views.get(w.hostname)}) for w in out]
        return out

    def _inspect(self, hostnames: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        inspector = self.bq.app.control.inspect(destination=hostnames, timeout=timeout)
        views: dict[str, dict[str, Any]] = defaultdict(dict)
        for name in ("active", "reserved", "stats"):
            try:
                reply = getattr(inspector, name)() or {}
            except Exception as exc:  # the broker went away mid-call: report, do not hang
                log.warning("celery inspect %s failed: %s", name, exc)
                continue
            for host, value in reply.items():
                views[host][name] = value
        return dict(views)

    # -- listings -----------------------------------------------------------------------

    def tasks(
        self, state: TaskState | str | None = None, *, tag: str | None = None,
        queue: str | None = None, handler: str | None = None,
        since: datetime | float | None = None, limit: int = 100,
        name: str | None = None, metadata: Mapping[str, Any] | None = None,
    ) -> list[TaskInfo]:
        """Tasks, newest state change first, filtered by state, tag, queue, handler,
        `since` (when they reached their state), `name` (equal to the one submitted) and
        `metadata` (every key given has the value given). Reads the per-state indexes a
        page at a time, newest first, and stops once it has `limit`."""
        with self.bq.broker_errors():
            return self.bq.run_steps(self.listing(
                state, tag=tag, queue=queue, handler=handler, since=since, limit=limit,
                name=name, metadata=metadata))

    def listing(
        self, state: TaskState | str | None = None, *, tag: str | None = None,
        queue: str | None = None, handler: str | None = None,
        since: datetime | float | None = None, limit: int = 100,
        name: str | None = None, metadata: Mapping[str, Any] | None = None,
    ) -> Steps[list[TaskInfo]]:
        """`tasks` as steps (bo_queue.aio awaits them)."""
        wanted = {TaskState(state)} if state is not None else set(TaskState)
        read = set(wanted)
        if TaskState.EXPIRED in wanted:  # a task whose `expires` passed unstarted still
            read |= {TaskState.PENDING, TaskState.QUEUED, TaskState.PAUSED}  # in its wait index
        low = "-inf" if since is None else (
            since.timestamp() if isinstance(since, datetime) else float(since))
        bq = self.bq
        tagged = None if tag is None else (yield from bq.records.tagging(tag))
        fits = _task_filter(queue, handler, name, metadata)
        # The indexes merged newest first (as heapq.merge would: on a tie, the first
        # index's), each read a page at a time, the next page once its last is taken.
        pages = [_IndexPages(bq.keys.state_index(s)) for s in sorted(read)]
        yield from _reading(pages, low)
        out: list[TaskInfo] = []
        batch: list[str] = []
        while live := [p for p in pages if p.items]:
            head = min(live, key=lambda p: p.items[0])
            _, task_id = head.items.popleft()
            if tagged is None or task_id in tagged:
                batch.append(task_id)
            if len(batch) >= 200:
                out += yield from self._matching(batch, wanted, fits)
                batch = []
                if len(out) >= limit:
                    return out[:limit]
            if not head.items and not head.done:
                yield from _reading([head], low)
        out += yield from self._matching(batch, wanted, fits)
        return out[:limit]

    def _matching(self, ids: list[str], wanted: set[TaskState],
                  fits: Callable[[TaskInfo], bool]) -> Steps[list[TaskInfo]]:
        return [
            info for info in (yield from self.bq.records.getting_many(ids))
            if info is not None and info.state in wanted  # gone, or moved on meanwhile
            and fits(info)
        ]

    def failed(self, limit: int = 100) -> list[TaskInfo]:
        """The failed-task registry, newest first: tasks that FAILED and were not retried
        (Celery on Redis keeps no dead-letter list). Each carries its error."""
        with self.bq.broker_errors():
            return self.bq.run_steps(self.failing(limit))

    def failing(self, limit: int = 100) -> Steps[list[TaskInfo]]:
        """`failed` as steps (bo_queue.aio awaits them)."""
        bq = self.bq
        [found] = yield Pipe.READ, lambda pipe: pipe.zrevrange(bq.keys.failed, 0, limit - 1)
        infos = yield from bq.records.getting_many([str(i) for i in found])
        return [info for info in infos if info is not None]

    def retry(self, task_id: str) -> TaskHandle:
        """Run a FAILED task again: a new task with the same handler, payload, queue,
        priority, tags, parent, name, description, metadata, and the submit's own retry
        policy and time limit. The failed one leaves the registry, and its record names
        the new one (`retried_as`)."""
        with self.bq.broker_errors():
            return TaskHandle(self.bq, self.bq.run_steps(self.retrying(task_id)))

    def retrying(self, task_id: str) -> Steps[str]:
        """`retry` as steps (bo_queue.aio awaits them): the new task's id."""
        bq = self.bq
        info = yield from bq.records.getting(task_id)
        if info is None:
            raise UnknownTaskError(task_id)
        if info.state is not TaskState.FAILED:
            raise ValidationError(f"task {task_id} is {info.state}; only FAILED tasks retry")
        [stored] = yield Pipe.RESULTS, lambda pipe: pipe.get(bq.results.key(task_id))
        meta = ready_meta(stored) or {}
        args = meta.get("args")
        if not isinstance(args, list) or not args or not isinstance(args[0], dict):
            raise ValidationError(f"task {task_id}'s payload is gone (its result expired)")
        # the claim: one retry wins
        [claimed] = yield Pipe.PLAIN, lambda pipe: pipe.zrem(bq.keys.failed, task_id)
        if not claimed:
            raise ValidationError(f"task {task_id} was retried already ({info.retried_as})")
        # a capability or version queue is chosen again by submit (bo_queue.core.placement)
        queue = info.queue if info.queue in bq.settings.queues else None
        try:  # Core.submit's own steps
            request = request_of(info.handler, args[0], queue=queue,
                                 priority=info.priority, tags=info.tags,
                                 parent_id=info.parent_id, name=info.name,
                                 description=info.description, metadata=info.metadata,
                                 retry=info.retry, time_limit=info.time_limit)
            plan = yield from bq.checking(request)
            done = yield from bq.submitting([plan])
            yield from bq.finishing(done)
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):  # not retried after all
                yield Pipe.PLAIN, lambda pipe: pipe.zadd(bq.keys.failed, {task_id: time.time()})
            raise
        [new_id] = done.ids
        [alive] = yield Pipe.READ, lambda pipe: pipe.exists(bq.keys.task(task_id))
        if alive:  # no fragment of an expired record
            yield Pipe.PLAIN, lambda pipe: pipe.hset(bq.keys.task(task_id), "retried_as", new_id)
        return new_id

    # -- events -------------------------------------------------------------------------

    def events(self, since: str = "0", count: int = 1000) -> list[Event]:
        """Events after stream id `since` ("0": from the oldest kept), oldest first."""
        with self.bq.broker_errors():
            found = self.bq.redis.xrange(self.bq.keys.events, f"({since}" if since != "0"
                                         else "-", "+", count=count)
        return [parse_event(i, fields) for i, fields in stream_entries(found)]

    def subscribe(
        self, callback: Callable[[Event], None], *, events: Iterable[str] = ("task", "study"),
        states: Iterable[str] | None = None, ids: Iterable[str] | None = None,
        since: str = "$",
    ) -> Subscription:
        """Call `callback(event)` on a bo_queue thread for every state change from now on
        (or after stream id `since`), in order. Filter by kind, state and task/study id.
        `WebhookSink(url)` is a callback that POSTs each event as JSON, with retries, from
        this process; `webhooks.add(url)` is one the workers deliver."""
        return Subscription(self.bq, callback, set(events),
                            None if states is None else set(states),
                            None if ids is None else set(ids), since)

    @property
    def webhooks(self) -> Webhooks:
        """Durable webhooks: kept in Redis, delivered by the workers, with retries, an
        HMAC signature and dead letters (bo_queue.monitor.webhooks)."""
        if self._webhooks is None:
            self._webhooks = Webhooks(self.bq)
        return self._webhooks

    # -- the tasks now ------------------------------------------------------------------

    def summary(self) -> Summary:
        """How many tasks are in each state now, and per handler.

        `total` and `by_state` are the sizes of the per-state indexes (one ZCARD each, in
        one MULTI round trip, so they are of one instant): cheap whatever the number of
        tasks. `by_handler` reads the `handler` field of every indexed task, paging each
        index 500 ids at a time and reading each page's records in one pipelined round
        trip, so its memory stays bounded but its cost is O(tasks in the indexes): about
        two round trips per 500 tasks. A record that expired (its TTL ran out) but whose id
        is still in an index is counted in `by_state` and `total`, not in `by_handler`. A
        task counts in the state whose index holds it: one whose `expires` passed while it
        waited stays PENDING or QUEUED here until a worker picks its message up and ends
        it (`tasks("EXPIRED")` finds it sooner). `by_handler` reads the indexes after
        `by_state`, one after another: a task that changes state meanwhile may be counted
        there in both states or in neither."""
        bq = self.bq
        states = list(TaskState)
        with bq.broker_errors():
            with bq.redis.pipeline(transaction=True) as pipe:
                for state in states:
                    pipe.zcard(bq.keys.state_index(state))
                sizes = [int(n) for n in pipe.execute()]
            by_handler: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for state in states:
                for handler in self._handlers_in(bq.keys.state_index(state)):
                    if handler is not None:
                        by_handler[handler][state.value] += 1
        return Summary(
            at=utc(time.time()), total=sum(sizes),
            by_state={state.value: n for state, n in zip(states, sizes, strict=True)},
            by_handler={h: dict(sorted(c.items())) for h, c in sorted(by_handler.items())},
        )

    def _handlers_in(self, key: str) -> Iterator[str | None]:
        """The `handler` field of each task in a state index (None: the record is gone),
        500 at a time."""
        redis_ = self.bq.redis
        offset = 0
        while True:
            ids: Any = redis_.zrange(key, offset, offset + SUMMARY_PAGE - 1)
            if ids:
                with redis_.pipeline(transaction=False) as pipe:
                    for task_id in ids:
                        pipe.hget(self.bq.keys.task(task_id), "handler")
                    yield from pipe.execute()
            if len(ids) < SUMMARY_PAGE:
                return
            offset += SUMMARY_PAGE

    # -- namespace metadata --------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The namespace's metadata (bo_queue.monitor.metadata)."""
        return self._metadata().get()

    def update_metadata(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `values` into the namespace's metadata; the whole, merged (see
        NamespaceMetadata.update: ValidationError on bad input, and nothing written)."""
        return self._metadata().update(values)

    def _metadata(self) -> NamespaceMetadata:
        if self._meta is None:
            self._meta = NamespaceMetadata(self.bq)
        return self._meta

    # -- metrics ------------------------------------------------------------------------

    def metrics(self, window_s: float = 300) -> Metrics:
        """Counts, rates and durations per handler over the last `window_s` seconds (from
        the event stream), tasks running now, and study metrics."""
        bq = self.bq
        now = time.time()
        start = int((now - window_s) * 1000)
        with bq.broker_errors():
            raw = bq.redis.xrange(bq.keys.events, f"{start}-0", "+")
            running = int(bq.redis.zcard(bq.keys.state_index(TaskState.RUNNING)))
            first = stream_entries(bq.redis.xrange(bq.keys.events, "-", "+", count=1))
        # The stream is capped (events_max_len): say when it no longer reaches back as far.
        complete = not first or int(first[0][0].split("-")[0]) <= start
        per: dict[str, list[Event]] = defaultdict(list)
        for stream_id, fields in stream_entries(raw):
            if fields.get("kind") == "task":
                event = parse_event(stream_id, fields)
                per[event.handler or "?"].append(event)
        handlers = {name: _summarise(name, evs, window_s) for name, evs in sorted(per.items())}
        total = _summarise("*", [e for evs in per.values() for e in evs], window_s)
        workers = self.workers()
        by_status, studies = self._studies(now, window_s)
        return Metrics(
            window_s=window_s, complete=complete, at=utc(now),
            handlers=handlers,
            total=total, running=running, concurrent=sum(w.active for w in workers),
            workers=len(workers), studies_by_status=by_status, studies=studies,
        )

    def _studies(self, now: float, window_s: float) -> tuple[dict[str, int], list[StudyMetrics]]:
        by_status: dict[str, int] = defaultdict(int)
        out = []
        for study in self.studies().list():
            by_status[study.status.value] += 1
            if study.status.terminal and study.updated_at.timestamp() < now - window_s:
                continue
            try:
                trials = self.studies().trials(study.id)
            except StudyNotFoundError:  # deleted meanwhile
                continue
            done = [t for t in trials if t.finished_at is not None and t.values is not None]
            cutoff = now - window_s
            recent = [t for t in done if t.finished_at and t.finished_at.timestamp() >= cutoff]
            out.append(StudyMetrics(
                id=study.id, name=study.name, status=study.status.value,
                completed_trials=study.completed_trials,
                trials_per_min=len(recent) / (window_s / 60),
                best_value=scoring.best_value(study.spec, trials),
            ))
        return dict(by_status), out


def _summarise(name: str, events: list[Event], window_s: float) -> HandlerMetrics:
    counts: dict[str, int] = defaultdict(int)
    durations = []
    for event in events:
        counts[event.state] += 1
        if event.state in ("SUCCEEDED", "FAILED") and event.duration is not None:
            durations.append(event.duration)
    ended = counts["SUCCEEDED"] + counts["FAILED"]
    return HandlerMetrics(
        handler=name, succeeded=counts["SUCCEEDED"], failed=counts["FAILED"],
        cancelled=counts["CANCELLED"], expired=counts["EXPIRED"],
        retried=counts["RETRYING"], started=counts["RUNNING"],
        throughput_per_min=ended / (window_s / 60),
        mean_duration_s=statistics.fmean(durations) if durations else None,
        p95_duration_s=_percentile(durations, 95) if durations else None,
        failure_rate=counts["FAILED"] / ended if ended else None,
        retry_rate=counts["RETRYING"] / ended if ended else None,
    )


class Subscription:
    """A thread reading the event stream; `close()` stops it."""

    def __init__(self, bq: Core, callback: Callable[[Event], None], kinds: set[str],
                 states: set[str] | None, ids: set[str] | None, since: str) -> None:
        self._client = redis_client(bq.settings, decode_responses=True, socket_timeout=10)
        self._stream = bq.keys.events
        self._callback = callback
        self._filter = (kinds, states, ids)
        if since == "$":  # pin "now" before returning, so no event after this call is missed
            with bq.broker_errors():
                last = stream_entries(self._client.xrevrange(self._stream, count=1))
            since = last[0][0] if last else "0"
        self._last = since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bo_queue-events", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop: no callback starts after this returns (one running may finish)."""
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._client.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        kinds, states, ids = self._filter
        while not self._stop.is_set():
            try:
                found: Any = self._client.xread({self._stream: self._last}, count=500, block=500)
            except redis.RedisError as exc:  # Redis away: try again shortly
                log.warning("event subscription: %s", exc)
                self._stop.wait(1.0)
                continue
            for _, entries in found or []:
                for stream_id, fields in stream_entries(entries):
                    if self._stop.is_set():
                        return
                    self._last = stream_id
                    event = parse_event(stream_id, fields)
                    if event.kind not in kinds or (states and event.state not in states):
                        continue
                    if ids is not None and event.id not in ids:
                        continue
                    try:
                        self._callback(event)
                    except Exception:
                        log.exception("event callback %s failed", self._callback)
