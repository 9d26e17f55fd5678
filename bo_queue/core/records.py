"""Task records: one Redis hash per task under the namespace, with a TTL.

The record is the source of truth for a task's state, progress, tags and lineage; the
Celery result backend holds its result. State changes that race (a cancel against a
worker starting the task) are single Lua scripts, so exactly one of them wins.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

import redis
from pydantic import BaseModel, ConfigDict

from bo_queue.core import scripts
from bo_queue.core.dependencies import SettledReply, settled_reply
from bo_queue.core.keys import Keys
from bo_queue.core.message import Message
from bo_queue.core.replicas import ReplicaAcks
from bo_queue.core.steps import Pipe, Step, Steps, drive
from bo_queue.retry import RetryPolicy
from bo_queue.states import Priority, TaskState

T = TypeVar("T")
MAX_RUNS = 50  # runs kept per task (lua/runs.lua), the latest


class TaskRun(BaseModel):
    """One run of a task: a worker started it, and it ended (`TaskInfo.runs`).

    `outcome`: SUCCEEDED, FAILED or CANCELLED (the task ended with it), RETRYING (it
    raised and the task's retry policy ran it again) or LOST (it died with its worker
    process, or the worker lost Redis; noticed when the task started again)."""

    model_config = ConfigDict(frozen=True)

    attempt: int  # TaskInfo.attempts when it started: 1 for the first run
    worker: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: Literal["SUCCEEDED", "FAILED", "CANCELLED", "RETRYING", "LOST"]
    error: str | None = None
    usage: dict[str, float] | None = None  # wall_s, cpu_s, peak_rss_mb, as TaskInfo.usage
    log: tuple[str, ...] = ()  # what the handler logged through ctx.log in this run


class TaskInfo(BaseModel):
    """A task record as `bq.info()` returns it."""

    model_config = ConfigDict(frozen=True)

    id: str
    handler: str
    state: TaskState
    queue: str
    priority: Priority
    tags: tuple[str, ...] = ()
    parent_id: str | None = None
    children: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    on_dependency_failure: str = "cancel"  # or "run": run even if a dependency did not succeed
    created_at: datetime
    due_at: datetime | None = None
    expires_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    attempts: int = 0  # how many times a worker started it (retries and redeliveries)
    lost: int = 0  # runs that died with their worker (killed, crashed, cut off from Redis)
    retries: int = 0
    worker: str | None = None
    progress: float = 0.0
    progress_message: str = ""
    error: str | None = None
    retried_as: str | None = None  # the task bq.retry() started in its place
    # the last run: what it cost (wall_s, cpu_s, peak_rss_mb: the worker process's peak),
    # the lines the handler logged through ctx.log, and the handler version that ran it
    usage: dict[str, float] | None = None
    log: tuple[str, ...] = ()
    version: str | None = None
    # what the producer said about the task (submit's name=, description=, metadata=), and
    # the name of the API key that submitted it over HTTP (None for a submit in Python)
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    created_by: str | None = None
    # the submit's own retry policy and time limit (None: the handler's hold)
    retry: RetryPolicy | None = None
    time_limit: float | None = None
    # every run, oldest first (the latest MAX_RUNS); `info()` reads them, listings do not
    runs: tuple[TaskRun, ...] = ()


class TaskTree(BaseModel):
    """A task and its subtasks, as `bq.tree()` returns them."""

    model_config = ConfigDict(frozen=True)

    task: TaskInfo
    children: tuple[TaskTree, ...] = ()

    def walk(self) -> list[TaskInfo]:
        """Every task in the tree, parents before their children."""
        return [self.task, *(info for child in self.children for info in child.walk())]


def _encode(fields: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, tuple | list):
            out[key] = json.dumps(list(value))
        elif isinstance(value, Mapping):
            out[key] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, Priority):
            out[key] = str(int(value))
        else:
            out[key] = str(value)
    return out


def _flat(fields: Mapping[str, Any]) -> list[str]:
    """Record fields as a script's field/value arguments."""
    return [part for pair in _encode(fields).items() for part in pair]


class Sends:
    """Stands in for a pipeline while a submit's messages are sent (Core.send, which
    writes each one's outbox entry and pushes it on its queue list): collected here,
    they are written by create_many's script after the records, each hash in one HSET
    and each list in one LPUSH, in the order sent (a worker's BRPOP takes the first
    pushed first)."""

    def __init__(self) -> None:
        self.hashes: dict[str, list[str]] = {}
        self.lists: dict[str, list[str]] = {}

    def hset(self, name: str, key: str, value: str) -> None:
        self.hashes.setdefault(name, []).extend((key, value))

    def lpush(self, name: str, *values: str) -> None:
        self.lists.setdefault(name, []).extend(values)

    def args(self) -> list[str | int]:
        """As record_create.lua reads them: 'hset' | 'lpush', key, count, values."""
        out: list[str | int] = []
        for command, groups in (("hset", self.hashes), ("lpush", self.lists)):
            for name, values in groups.items():
                out += [command, name, len(values), *values]
        return out


# Told what settling a task's dependents did: (released count, cancelled ids).
OnSettled = Callable[[int, list[str]], None]


class RecordStore:
    def __init__(
        self, client: redis.Redis, keys: Keys, ttl_s: int, on_settled: OnSettled | None = None,
        events_max_len: int = 200_000, acks: ReplicaAcks | None = None,
    ) -> None:
        self.redis = client
        self.acks = acks or ReplicaAcks(0, 1.0)  # transition, succeed: a task's end waits for them
        self.keys = keys
        self.ttl_s = ttl_s
        self.events_max_len = events_max_len
        self.on_settled = on_settled  # Core.settle: sends released tasks, wakes cancelled ones
        self._wait = scripts.register(client, "dependencies_wait.lua", MAX_EVENTS=events_max_len)
        self._start = scripts.register(
            client, "record_start.lua", MAX_EVENTS=events_max_len, MAX_RUNS=MAX_RUNS
        )
        # EVAL'd, as `_create`: a script in a pipeline (`cancelling`) costs a SCRIPT EXISTS
        self._cancel = scripts.text("record_cancel.lua", MAX_EVENTS=events_max_len)
        self._transition = scripts.register(
            client, "record_transition.lua", MAX_EVENTS=events_max_len, MAX_RUNS=MAX_RUNS
        )
        self._succeed = scripts.register(
            client, "record_succeed.lua", MAX_EVENTS=events_max_len, MAX_RUNS=MAX_RUNS
        )
        self._progress = scripts.register(client, "record_progress.lua")
        self._delete = scripts.register(client, "record_delete.lua")
        self._extend = scripts.text("record_extend.lua")
        self._create = scripts.text("record_create.lua", MAX_EVENTS=events_max_len)
        self._pause = scripts.register(client, "record_pause.lua", MAX_EVENTS=events_max_len)
        self._resume = scripts.register(client, "record_resume.lua", MAX_EVENTS=events_max_len)
        self._resume_queue = scripts.register(client, "queue_resume.lua")
        self._add_dependencies = scripts.register(
            client, "dependencies_add.lua", MAX_EVENTS=events_max_len
        )
        self._update = scripts.register(client, "record_update.lua")

    def ttl_for(self, due_at: float | None) -> int:
        """Retention counts from when a task is due, so a long delay keeps its record."""
        wait = 0.0 if due_at is None else max(0.0, due_at - time.time())
        return self.ttl_s + math.ceil(wait)

    def create(self, pipe: Any, fields: Mapping[str, Any]) -> None:
        """Queue the writes for a new record on `pipe` (see create_many)."""
        self.create_many(pipe, [fields])

    def create_many(self, pipe: Any, records: Sequence[Mapping[str, Any]],
                    sends: Sends | None = None) -> None:
        """Queue on `pipe` the writes for new records: one script that writes them all,
        each indexed and announced as set_state does every later change
        (bo_queue.core.events), then the outbox entries and pushes of `sends` (the
        messages sent with them), then the records' tag and parent links. One command
        for a whole plain batch rather than six per task."""
        args: list[str | int] = [self.keys.namespace, len(records)]
        links: list[tuple[str, str, int]] = []
        for fields in records:
            task_id = fields["id"]
            ttl = self.ttl_for(fields.get("due_at"))
            flat = _flat(fields)
            args += [task_id, ttl, str(fields["state"]), repr(float(fields["created_at"])),
                     fields["handler"], fields["queue"], len(flat), *flat]
            owners = [self.keys.tag(tag) for tag in fields.get("tags") or ()]
            if fields.get("parent_id"):
                owners.append(self.keys.children(fields["parent_id"]))
            links += [(link, task_id, ttl) for link in owners]
        if sends is not None:
            args += sends.args()
        # EVAL, not a registered script: a pipeline holding scripts first asks the server
        # which it knows (SCRIPT EXISTS), a round trip on every submit.
        pipe.eval(self._create, 0, *args)
        for link, task_id, ttl in links:
            pipe.sadd(link, task_id)
            pipe.eval(self._extend, 1, link, ttl)

    def wait_for(
        self, pipe: Any, task_id: str, depends_on: Sequence[str], message: Message
    ) -> None:
        """Queue, after `create`, the script that parks a new PENDING record until its
        dependencies succeed. Its reply in the pipeline's results: ['queued'] (nothing
        left to wait for: scheduled to send now), ['waiting'] or ['cancelled', dep, state]."""
        ttl = self.ttl_for(None)
        args: list[str | float] = [
            self.keys.namespace, task_id, time.time(), ttl, message.encode(), *depends_on
        ]
        # As Script(client=pipe) does for a sync pipeline, and an asyncio one as well: the
        # pipeline loads the script first if Redis lacks it (bo_queue.aio submits too).
        pipe.scripts.add(self._wait)
        pipe.evalsha(self._wait.sha, 0, *args)

    def start(
        self, task_id: str, worker: str, handler: str, queue: str, priority: Priority,
        lost_allowed: int = 3, version: str | None = None, run: str | None = None,
        held: Message | None = None,
    ) -> tuple[str, int]:
        """A worker is about to run the task: ('run', attempt) | ('cancelled', 0) |
        ('done', 0) | ('lost', lost runs) when more than `lost_allowed` runs died with
        their worker (the record is left for the caller to fail) | ('hold', 0) when it
        must not start now (PAUSED, waiting on a dependency added later, or its queue
        paused): call again with its message as `held`, which is then kept in Redis
        ('held', 0) unless that changed meanwhile. `run` identifies this start, so that
        a client retrying it after a lost reply is not a lost run."""
        keys = [self.keys.task(task_id), self.keys.cancelled(task_id)]
        args: list[str | float] = [
            self.keys.namespace, worker, time.time(), self.ttl_s, task_id, handler, queue,
            int(priority), lost_allowed, version or "", run or "",
            "" if held is None else held.encode(),
        ]
        reply = self._settled(self._start(keys=keys, args=args))
        return str(reply.value), int(reply.extra or 0)

    def transition(
        self, task_id: str, state: TaskState, *, ttl_s: int | None = None, **fields: Any
    ) -> bool:
        """Move a record to `state` unless it has already ended (or is gone). False if so.
        With replica_acks, waits for the replicas after the write (ReplicaAckError)."""
        args: list[str | float] = [
            self.keys.namespace, task_id, state.value, time.time(), ttl_s or self.ttl_s,
            *_flat(fields),
        ]
        return self.acks.call(self.redis, self._transition, [self.keys.task(task_id)], args,
                              then=lambda raw: bool(self._settled(raw).value))

    def succeed(self, task_id: str, result_key: str, result: str, result_ttl_s: int,
                **fields: Any) -> bool:
        """A successful run's ending in one script: its result stored and published as
        Celery's Redis backend does (`result`, encoded by it, under `result_key`), then the
        record SUCCEEDED as `transition` moves it. False if the record had already ended.
        With replica_acks, waits for the replicas after the write (ReplicaAckError)."""
        keys = [self.keys.task(task_id), result_key]
        args: list[str | float] = [
            self.keys.namespace, task_id, time.time(), self.ttl_s, result, result_ttl_s,
            *_flat(fields),
        ]
        return self.acks.call(self.redis, self._succeed, keys, args,
                              then=lambda raw: bool(self._settled(raw).value))

    def cancel(self, task_id: str, reason: str) -> TaskState | None:
        """Persist a cancellation. Returns the state before it, or None for an unknown id."""
        prior, reply = self._run(self.cancelling(task_id, reason))
        self._notify(reply)
        return prior

    def cancelling(self, task_id: str, reason: str) -> Steps[tuple[TaskState | None, SettledReply]]:
        """`cancel` as a step: (the state before, the script's reply), settling the
        dependents it released or cancelled left to the caller (Core.settling)."""
        keys = [self.keys.task(task_id), self.keys.cancelled(task_id)]
        args: list[str | float] = [self.keys.namespace, task_id, time.time(), self.ttl_s, reason]
        [raw] = yield Pipe.PLAIN, lambda pipe: pipe.eval(self._cancel, len(keys), *keys, *args)
        reply = settled_reply(raw)
        return (None if reply.value is None else TaskState(reply.value)), reply

    def pause(self, task_id: str) -> TaskState | None:
        """PENDING or QUEUED -> PAUSED (lua/record_pause.lua). The state before (any other
        one: nothing changed), or None for an unknown id."""
        prior = self._pause(keys=[self.keys.task(task_id)],
                            args=[self.keys.namespace, task_id, time.time()])
        return None if prior is None else TaskState(prior)

    def resume(self, task_id: str) -> tuple[TaskState, bool, TaskState] | None:
        """PAUSED -> what it was (lua/record_resume.lua): (the state before, whether a
        held message was scheduled to be sent now, the state it resumed to); None for an
        unknown id."""
        reply = self._resume(keys=[self.keys.task(task_id)],
                             args=[self.keys.namespace, task_id, time.time(), self.ttl_s])
        if reply is None:
            return None
        return TaskState(reply[0]), bool(int(reply[1])), TaskState(reply[2])

    def resume_queue(self, queue: str) -> int:
        """Un-pause `queue`; how many held messages were scheduled to be sent now."""
        args: list[str | float] = [self.keys.namespace, queue, time.time(), self.ttl_s]
        return int(self._resume_queue(args=args))

    def add_dependencies(self, task_id: str, depends_on: Sequence[str]) -> list[str]:
        """lua/dependencies_add.lua's reply: ['added', waiting], ['gone'], ['started',
        state], ['unknown', id] or ['failed', id, state] (nothing written)."""
        args: list[str | float] = [
            self.keys.namespace, task_id, self.ttl_for(None), time.time(), *depends_on
        ]
        return [str(part) for part in self._add_dependencies(args=args)]

    def update(
        self, task_id: str, fields: Mapping[str, Any],
        messages: Sequence[tuple[str, str, str]] = (),
        move: tuple[str, str, str, str] = ("", "", "", ""),
    ) -> list[str]:
        """lua/record_update.lua: write `fields` and the rewritten kept `messages` (hash,
        read, new), and `move` a broker message (from list, to list, read, new), if the
        task has not started and no kept message changed since it was read."""
        flat: list[str | float] = []
        for key, value in _encode(fields).items():
            flat += [key, value]
        args: list[str | float] = [self.keys.namespace, task_id, len(flat) // 2, *flat,
                                   len(messages)]
        for triple in messages:
            args += list(triple)
        args += list(move)
        return [str(part) for part in self._update(keys=[self.keys.task(task_id)], args=args)]

    def delete(self, task_id: str, result_key: str | None) -> TaskState | bool:
        """Delete an ended task's record and everything kept with it: its state-index and
        failed-registry entries, tag, parent and dependency links, its own children,
        dependents and waiting sets, checkpoint and cancel flag (lua/record_delete.lua),
        and `result_key` (Celery's result, when it is on this server) in the same script.
        True: deleted; False: no such task; a state: it has not ended (nothing deleted)."""
        keys = [self.keys.task(task_id)] + ([result_key] if result_key else [])
        reply = self._delete(keys=keys, args=[self.keys.namespace, task_id])
        if reply is None or reply is False:
            return False
        return True if reply == "deleted" else TaskState(str(reply))

    def _settled(self, raw: list[Any]) -> SettledReply:
        """Read a script's reply; hand what settling dependents did to `on_settled`."""
        return self._notify(settled_reply(raw))

    def _notify(self, reply: SettledReply) -> SettledReply:
        if (reply.released or reply.cancelled) and self.on_settled is not None:
            self.on_settled(reply.released, reply.cancelled)
        return reply

    def _run(self, steps: Steps[T]) -> T:
        """Drive read steps (and PLAIN writes) on this client (Core.run_steps does all)."""
        return drive(steps, self._execute)

    def _execute(self, step: Step) -> list[Any]:
        kind, fill = step
        if kind not in (Pipe.READ, Pipe.PLAIN):
            raise ValueError(f"RecordStore runs plain pipelines, not {kind}")
        with self.redis.pipeline(transaction=False) as pipe:
            fill(pipe)
            replies: list[Any] = pipe.execute()
        return replies

    def dependents(self, task_ids: Sequence[str]) -> list[set[str]]:
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.smembers(self.keys.dependents(task_id))
            return [{str(m) for m in found} for found in pipe.execute()]

    def is_cancelled(self, task_id: str) -> bool:
        return bool(self.redis.exists(self.keys.cancelled(task_id)))

    def set_progress(self, task_id: str, fraction: float, message: str) -> None:
        """On a record that still exists (one past its retention is not recreated)."""
        self._progress(keys=[self.keys.task(task_id)], args=[fraction, message])

    def state(self, task_id: str) -> TaskState | None:
        """Just the state (EXPIRED once `expires` has passed unstarted); None if unknown."""
        state, expires = self.get_fields(task_id, "state", "expires_at")
        if state is None:
            return None
        return derived_state(TaskState(state), expires)

    def get_fields(self, task_id: str, *fields: str) -> list[str | None]:
        values = self.redis.hmget(self.keys.task(task_id), list(fields))
        return [None if v is None else str(v) for v in values]

    def get(self, task_id: str) -> TaskInfo | None:
        """The record with its runs (TaskInfo.runs)."""
        return self._run(self.getting(task_id))

    def getting(self, task_id: str) -> Steps[TaskInfo | None]:
        """`get` as a step."""
        replies = yield Pipe.READ, lambda pipe: self.read(pipe, task_id)
        return self.from_replies(replies)

    def read(self, pipe: Any, task_id: str) -> None:
        """Queue on `pipe` (sync or asyncio) the reads `from_replies` makes a record of."""
        pipe.hgetall(self.keys.task(task_id))
        pipe.smembers(self.keys.children(task_id))
        pipe.lrange(self.keys.runs(task_id), 0, -1)

    @staticmethod
    def from_replies(replies: Sequence[Any]) -> TaskInfo | None:
        raw, kids, runs = replies[:3]
        if not (raw and "state" in raw and "handler" in raw):
            return None
        return parse_record(raw, kids).model_copy(update={"runs": parse_runs(runs)})

    def get_many(self, task_ids: Sequence[str]) -> list[TaskInfo | None]:
        """Records without their runs (listings; `get` reads them)."""
        return self._run(self.getting_many(task_ids))

    def getting_many(self, task_ids: Sequence[str]) -> Steps[list[TaskInfo | None]]:
        """`get_many` as a step."""
        def fill(pipe: Any) -> None:
            for task_id in task_ids:
                pipe.hgetall(self.keys.task(task_id))
                pipe.smembers(self.keys.children(task_id))

        replies = yield Pipe.READ, fill
        return [  # None: gone, or only fragments of one left
            parse_record(raw, kids) if raw and "state" in raw and "handler" in raw else None
            for raw, kids in zip(replies[::2], replies[1::2], strict=True)
        ]

    def children(self, task_id: str) -> list[TaskInfo]:
        ids = sorted(str(m) for m in self.redis.smembers(self.keys.children(task_id)))
        found = [info for info in self.get_many(ids) if info is not None]
        return sorted(found, key=lambda info: (info.created_at, info.id))

    def descendants(self, task_id: str) -> list[str]:
        """Every subtask below a task, breadth first (a link cycle cannot loop it)."""
        return self._run(self.descending(task_id))

    def descending(self, task_id: str) -> Steps[list[str]]:
        """`descendants` as steps, a level of the tree each."""
        seen, frontier, out = {task_id}, [task_id], []
        while frontier:
            def fill(pipe: Any, parents: list[str] = frontier) -> None:
                for parent in parents:
                    pipe.smembers(self.keys.children(parent))

            found = yield Pipe.READ, fill
            frontier = sorted({str(c) for kids in found for c in kids} - seen)
            seen.update(frontier)
            out += frontier
        return out

    def tree(self, task_id: str, max_depth: int) -> TaskTree | None:
        info = self.get(task_id)
        if info is None:
            return None
        if max_depth <= 0:
            return TaskTree(task=info)
        kids = [self.tree(child.id, max_depth - 1) for child in self.children(task_id)]
        return TaskTree(task=info, children=tuple(k for k in kids if k is not None))

    def tagged(self, tag: str) -> set[str]:
        return self._run(self.tagging(tag))

    def tagging(self, tag: str) -> Steps[set[str]]:
        """`tagged` as a step."""
        [members] = yield Pipe.READ, lambda pipe: pipe.smembers(self.keys.tag(tag))
        return {str(member) for member in members}

    def exists(self, task_id: str) -> bool:
        return bool(self.redis.exists(self.keys.task(task_id)))


def parse_record(raw: Mapping[str, str], children: set[str] | None = None) -> TaskInfo:
    data: dict[str, Any] = dict(raw)
    data["tags"] = tuple(json.loads(data.get("tags", "[]")))
    data["depends_on"] = tuple(json.loads(data.get("depends_on", "[]")))
    data["log"] = tuple(json.loads(data.get("log", "[]")))
    for field in ("usage", "metadata", "retry"):  # absent from records written before them
        if field in data:
            data[field] = json.loads(data[field])
    data["children"] = tuple(sorted(children or ()))
    data["state"] = derived_state(TaskState(data["state"]), data.get("expires_at"))
    return TaskInfo.model_validate(data)


def parse_runs(raw: Sequence[str]) -> tuple[TaskRun, ...]:
    """The runs lua/runs.lua kept (newest first, JSON each), oldest first; one that
    cannot be read is left out rather than hiding the others."""
    runs = []
    for item in reversed(raw):
        try:
            data = json.loads(item)
            for field in ("usage", "log"):  # kept as the JSON the run report wrote
                if isinstance(data.get(field), str):
                    data[field] = json.loads(data[field])
            runs.append(TaskRun.model_validate(data))
        except (ValueError, TypeError, AttributeError):
            continue
    return tuple(runs)


def derived_state(state: TaskState, expires_at: str | None) -> TaskState:
    # A task whose `expires` passed while it waited will never run: say so now, not only
    # once a worker picks its message up and discards it.
    waiting = state in (TaskState.PENDING, TaskState.QUEUED, TaskState.PAUSED)
    if waiting and expires_at and float(expires_at) < time.time():
        return TaskState.EXPIRED
    return state
