"""Pull mode: tasks that external agents fetch, instead of Celery workers (`bq.agents`).

A task type declared with `declare_type` is a *pull type*: its tasks are submitted as
usual (`bq.submit`, `submit_many`, `depends_on`, countdowns, tags, `get()`), but
`Core.send` hands them here instead of to Celery. They wait in Redis, per type, best
first (the broker priority, then submit order), until an agent claims one:

    bq.agents.declare_type("lab.synthesize", requires=["pipette"], lease_s=3600)
    bq.agents.register("robot-1", kind="robot", capabilities=["pipette"])
    task = bq.agents.claim("robot-1")            # a ClaimedTask, or None
    bq.agents.heartbeat("robot-1")               # keeps its leases; says what was cancelled
    bq.agents.complete(task.id, "robot-1", {"yield": 0.82})   # or fail, cancel, release

A claim is one Lua script, so two agents never get the same task. It holds the task
under a lease (default 24 h; per type or per claim shorter or longer); an agent's
heartbeat extends its leases, and a lease that runs out puts the task back for another
agent (every script here first releases leases that ran out, so no extra process is
needed; `sweep()` does only that). complete/fail/release check that the agent still
holds the task. A result is stored in Celery's result backend exactly as a worker stores
one, so `TaskHandle.get()`, `then()`, `bq.info()`, `bq.retry()` and dependents work the
same for pulled tasks; ending a task settles its dependents in the same script, as a
worker's transition does.

Redis (under the namespace): `pull:ready:<type>` (sorted sets of waiting ids),
`pull:later` (not due yet), `pull:tasks` (id -> {type, rank, agent, lease_s,
finishing}), `pull:messages` (id -> message), `pull:leases` (id -> lease end), `agents`
(agent id -> last heartbeat), `agent:<id>` (kind, capabilities), `agent:<id>:tasks`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery.app.task import Context
from pydantic import BaseModel, ConfigDict

from bo_queue import registry
from bo_queue.core import scripts
from bo_queue.core.dependencies import settled_reply
from bo_queue.core.keys import PULL_QUEUE
from bo_queue.core.message import Message
from bo_queue.errors import (
    AgentError,
    NotHeldError,
    TaskCancelledError,
    UnknownHandlerError,
    UnknownTaskError,
    ValidationError,
    shown,
)
from bo_queue.states import Priority, TaskState
from bo_queue.validation import MAX_HORIZON_S, TASK_ID, check_json, encodable, known_id, utc

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core

__all__ = [
    "DEFAULT_LEASE_S",
    "PULL_QUEUE",
    "AgentHeartbeat",
    "AgentInfo",
    "AgentManager",
    "ClaimedTask",
    "PullType",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 24 * 3600.0  # the seed's stale-task timeout
# complete() and fail() store the result between two scripts; the first lengthens the
# lease to at least this, so it cannot run out in between.
FINISH_GRACE_S = 60.0
SWEEP_BATCH = 100  # expired leases (and due tasks) one script moves
SKIP_LIMIT = 100  # ended or expired tasks one claim drops before it answers "look again"
MAX_NAME = 200
MAX_CAPABILITIES = 100
MAX_ERROR = 65_536  # characters of an error message or traceback from fail()
_AGENT_ID = re.compile(TASK_ID)
_ERROR_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class PullType(BaseModel):
    """A pull task type: its tasks wait for agents that declare `requires`."""

    model_config = ConfigDict(frozen=True)

    name: str
    requires: tuple[str, ...] = ()
    lease_s: float | None = None  # None: the manager's default (24 h)
    waiting: int = 0  # tasks waiting for an agent (ended ones not yet swept included)


class ClaimedTask(BaseModel):
    """What `claim` hands an agent."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    payload: dict[str, Any]
    priority: Priority
    attempt: int  # 1 on the first claim; a task released or lost comes back with more
    lease_expires_at: datetime
    tags: tuple[str, ...] = ()
    parent_id: str | None = None


class AgentHeartbeat(BaseModel):
    """What a heartbeat tells an agent: the tasks it still holds (leases extended), and
    those cancelled since (now CANCELLED: stop working on them). A task it was working
    on that is in neither went back to the queue: its lease ran out."""

    held: list[str]
    cancelled: list[str]


class AgentInfo(BaseModel):
    """An agent as `agents()` lists it."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str | None = None  # None: never registered (it only claimed or heartbeat)
    capabilities: tuple[str, ...] = ()
    registered_at: datetime | None = None
    last_heartbeat: datetime | None = None  # a claim, heartbeat, complete, ... counts
    alive: bool = False  # heard from within settings.heartbeat_timeout_s
    tasks: tuple[str, ...] = ()  # the pull tasks it holds


def _list(value: Any) -> list[Any]:
    """A list from Lua's cjson, which encodes an empty table as {}."""
    return value if isinstance(value, list) else []


def agent_id_of(agent_id: object) -> str:
    """`agent_id` if it can name an agent (as a task id: letters, digits, '._@-', at most
    128); ValidationError otherwise."""
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise ValidationError(
            f"an agent id is 1-128 letters, digits or '._@-', not {shown(agent_id)}"
        )
    return agent_id


def _names(values: object, what: str) -> tuple[str, ...]:
    """Capability names: non-empty UTF-8 strings of at most 200 characters."""
    if isinstance(values, str):
        values = (values,)
    if not isinstance(values, Iterable) or isinstance(values, bytes | Mapping):
        raise ValidationError(f"{what} must be a list of names, not {shown(values)}")
    names = list(values)
    if len(names) > MAX_CAPABILITIES:
        raise ValidationError(f"at most {MAX_CAPABILITIES} {what}, not {len(names)}")
    for name in names:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not encodable(name):
            raise ValidationError(
                f"{what} are non-empty strings of at most {MAX_NAME} characters, "
                f"not {shown(name)}"
            )
    return tuple(sorted(set(names)))


def _lease(lease_s: object) -> float:
    if (isinstance(lease_s, bool) or not isinstance(lease_s, int | float)
            or not 0 < lease_s <= MAX_HORIZON_S):
        raise ValidationError(
            f"lease_s must be a number of seconds above 0 and at most ten years, "
            f"not {shown(lease_s)}"
        )
    return float(lease_s)


def _remote_exception(error_type: str, message: str) -> Exception:
    """An exception Celery's backend stores as `error_type` (module.Name or Name) with
    `message`: what TaskHandle.get() raises as TaskFailedError's remote type/message."""
    module, _, name = error_type.rpartition(".")
    cls: type[Exception] = type(
        name, (Exception,), {"__module__": module or "builtins", "__qualname__": name}
    )
    return cls(message)


class AgentManager:
    """`bq.agents`: pull task types, agents, and the claim/complete cycle."""

    def __init__(self, bq: Core, default_lease_s: float | None = None) -> None:
        self.bq = bq
        self.keys = bq.keys
        self.default_lease_s = _lease(default_lease_s or bq.settings.agent_lease_s)
        client = bq.redis

        def script(name: str) -> Any:  # a pull script (lua/pull.lua)
            return scripts.register(client, name, MAX_EVENTS=bq.settings.events_max_len,
                                    BATCH=SWEEP_BATCH, SKIP=SKIP_LIMIT)

        self._claim = script("agents_claim.lua")
        self._heartbeat = script("agents_heartbeat.lua")
        self._begin = script("agents_begin.lua")
        self._finish = script("agents_finish.lua")
        self._release = script("agents_release.lua")
        self._cancel = script("agents_cancel.lua")
        self._unregister = script("agents_unregister.lua")
        self._sweep = script("agents_sweep.lua")
        self._tidy = script("agents_tidy.lua")
        self._declare = scripts.register(client, "agents_declare.lua")
        self._types: dict[str, PullType] = {}
        self._types_read_at = -math.inf
        self._held_sends_at = -math.inf

    @property
    def clock(self) -> Callable[[], float]:
        """What "now" is in the pull scripts (Core.pull's clock; tests move it)."""
        return self.bq.pull.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.bq.pull.clock = clock

    # -- types ----------------------------------------------------------------------------

    def declare_type(
        self, name: str, *, requires: Iterable[str] = (), lease_s: float | None = None
    ) -> PullType:
        """Make `name` a pull type: its tasks wait for agents that declare every
        capability in `requires`, each claim holding one for `lease_s` (default: the
        manager's, 24 h). Declaring it again changes both. A name workers serve as a
        handler is a ValidationError."""
        if (not isinstance(name, str) or not name or len(name) > MAX_NAME
                or not encodable(name)):
            raise ValidationError(
                f"a task type is a non-empty string of at most {MAX_NAME} characters, "
                f"not {shown(name)}"
            )
        needs = _names(requires, "required capabilities")
        lease = None if lease_s is None else _lease(lease_s)
        if registry.get(name) is not None:
            raise ValidationError(
                f"{name!r} is a handler registered in this process; a pull type needs "
                "a name no worker serves"
            )
        entry = {"pull": True, "queue": PULL_QUEUE, "requires": list(needs), "lease_s": lease,
                 "updated_at": time.time()}
        with self.bq.broker_errors():
            verdict = self._declare(keys=[self.keys.handlers], args=[name, json.dumps(entry)])
        if verdict != "ok":
            queue = json.loads(verdict).get("queue")
            raise ValidationError(
                f"{name!r} is a handler workers serve (queue {queue!r}); a pull type needs "
                "a name no worker serves"
            )
        self._types_read_at = -math.inf
        self.bq.forget_handlers()  # submit() re-reads the directory
        return PullType(name=name, requires=needs, lease_s=lease)

    def types(self) -> list[PullType]:
        """Every pull type, with how many tasks wait for an agent, by name."""
        declared = self._read_types()
        with self.bq.broker_errors(), self.bq.redis.pipeline(transaction=False) as pipe:
            for name in declared:
                pipe.zcard(self.keys.pull_ready(name))
            counts = pipe.execute()
        return [declared[name].model_copy(update={"waiting": int(count)})
                for name, count in zip(declared, counts, strict=True)]

    def _read_types(self, refresh: bool = False) -> dict[str, PullType]:
        if refresh or time.monotonic() - self._types_read_at > 1.0:
            directory = self.bq.refresh_handlers()
            self._types = {
                name: PullType(name=name, requires=tuple(entry.get("requires") or ()),
                               lease_s=entry.get("lease_s"))
                for name, entry in sorted(directory.items()) if entry.get("pull")
            }
            self._types_read_at = time.monotonic()
        return self._types

    # -- agents ---------------------------------------------------------------------------

    def register(
        self, agent_id: str, kind: str = "agent", capabilities: Iterable[str] = ()
    ) -> AgentInfo:
        """Register (or update) an agent: its kind and the capabilities it declares.
        Tasks of a type that requires capabilities go only to agents declaring them all."""
        agent = agent_id_of(agent_id)
        if not isinstance(kind, str) or not kind or len(kind) > MAX_NAME or not encodable(kind):
            raise ValidationError(f"kind is a non-empty string of at most {MAX_NAME} "
                                  f"characters, not {shown(kind)}")
        caps = _names(capabilities, "capabilities")
        now = self.clock()
        with self.bq.broker_errors(), self.bq.redis.pipeline() as pipe:
            pipe.hset(self.keys.agent(agent), mapping={
                "kind": kind, "capabilities": json.dumps(list(caps)), "registered_at": now,
            })
            pipe.zadd(self.keys.agents, {agent: now})
            pipe.execute()
        return self.agent(agent)

    def unregister(self, agent_id: str) -> list[str]:
        """Forget an agent; the tasks it held go back to the queue (returns their ids)."""
        reply = self._run(self._unregister, agent_id_of(agent_id))
        return [str(i) for i in _list(reply.get("given_back"))]

    def agent(self, agent_id: str) -> AgentInfo:
        """One agent (AgentError if it is unknown)."""
        found = self._describe([agent_id_of(agent_id)])[0]
        if found is None:
            raise AgentError(f"no agent {agent_id!r}")
        return found

    def agents(self) -> list[AgentInfo]:
        """Every agent: its kind, capabilities, last heartbeat, whether it is alive (heard
        from within settings.heartbeat_timeout_s) and the tasks it holds, by id."""
        with self.bq.broker_errors():
            ids = sorted(str(i) for i in self.bq.redis.zrange(self.keys.agents, 0, -1))
        return [info for info in self._describe(ids) if info is not None]

    def _describe(self, ids: Sequence[str]) -> list[AgentInfo | None]:
        with self.bq.broker_errors(), self.bq.redis.pipeline(transaction=False) as pipe:
            for agent in ids:
                pipe.zscore(self.keys.agents, agent)
                pipe.hgetall(self.keys.agent(agent))
                pipe.smembers(self.keys.agent_tasks(agent))
            replies = pipe.execute()
        now, timeout = self.clock(), self.bq.settings.heartbeat_timeout_s
        out: list[AgentInfo | None] = []
        for index, agent in enumerate(ids):
            seen, card, tasks = replies[3 * index: 3 * index + 3]
            if seen is None and not card:
                out.append(None)
                continue
            out.append(AgentInfo(
                id=agent, kind=card.get("kind"),
                capabilities=tuple(json.loads(card.get("capabilities", "[]"))),
                registered_at=utc(float(card["registered_at"])) if "registered_at" in card
                else None,
                last_heartbeat=None if seen is None else utc(float(seen)),
                alive=seen is not None and now - float(seen) <= timeout,
                tasks=tuple(sorted(str(t) for t in tasks)),
            ))
        return out

    def heartbeat(self, agent_id: str) -> AgentHeartbeat:
        """The agent is alive: extend the leases of the tasks it holds. Held tasks
        cancelled meanwhile are CANCELLED now and returned, so the agent can stop."""
        reply = self._run(self._heartbeat, agent_id_of(agent_id))
        return AgentHeartbeat(held=sorted(_list(reply.get("held"))),
                              cancelled=sorted(_list(reply.get("cancelled"))))

    # -- claiming and finishing --------------------------------------------------------

    def claim(
        self, agent_id: str, task_types: Iterable[str] | None = None,
        lease_s: float | None = None,
    ) -> ClaimedTask | None:
        """The next task for this agent, now RUNNING and held under a lease, or None.

        Among `task_types` (default: every pull type whose required capabilities the
        agent declared), the highest priority first, then the oldest. Asking for a type
        whose capabilities the agent has not declared is an AgentError. `lease_s`
        overrides the type's lease (default 24 h); heartbeats extend it."""
        agent = agent_id_of(agent_id)
        lease = None if lease_s is None else _lease(lease_s)
        pairs: list[str | float] = []
        for pull_type in self._servable(agent, task_types):
            pairs += [pull_type.name, lease or pull_type.lease_s or self.default_lease_s]
        self._send_held()
        while True:
            reply, message = self._call(self._claim, agent, *pairs)
            claimed = reply.get("claimed")
            if claimed:
                payload = _readable(claimed["id"], message).payload if message else {}
                return ClaimedTask(
                    id=claimed["id"], type=claimed["type"], payload=payload,
                    priority=Priority(int(claimed["priority"] or Priority.NORMAL)),
                    attempt=int(claimed["attempt"]),
                    lease_expires_at=utc(float(claimed["lease_until"])),
                    tags=tuple(json.loads(claimed["tags"] or "[]")),
                    parent_id=claimed["parent_id"] or None,
                )
            if not reply.get("busy"):
                return None

    def _servable(self, agent: str, task_types: Iterable[str] | None) -> list[PullType]:
        wanted = None
        if task_types is not None:
            wanted = list(dict.fromkeys(_names(task_types, "task types")))
            if not wanted:
                return []
        declared = self._read_types()
        if wanted is not None and any(name not in declared for name in wanted):
            declared = self._read_types(refresh=True)
        with self.bq.broker_errors():
            raw = self.bq.redis.hget(self.keys.agent(agent), "capabilities")
        capabilities = set(json.loads(raw)) if raw else set()
        if wanted is None:
            return [t for t in declared.values() if set(t.requires) <= capabilities]
        out = []
        for name in wanted:
            pull_type = declared.get(name)
            if pull_type is None:
                directory = self.bq.handler_directory()
                if name in directory or registry.get(name) is not None:
                    raise ValidationError(f"{name!r} is not a pull task type (workers serve it)")
                raise UnknownHandlerError(name, list(declared))
            missing = sorted(set(pull_type.requires) - capabilities)
            if missing:
                raise AgentError(
                    f"agent {agent!r} has not declared the capabilities {', '.join(missing)} "
                    f"that task type {name!r} requires (register it with them)"
                )
            out.append(pull_type)
        return out

    def _send_held(self) -> None:
        """Send held submissions that are due (workers and beat do it every second; with
        no worker running at all, claims must)."""
        if time.monotonic() - self._held_sends_at < 1.0:
            return
        self._held_sends_at = time.monotonic()
        with self.bq.broker_errors():
            self.bq.delays.release_due(self.bq.send)

    def complete(self, task_id: str, agent_id: str, result: Any = None) -> None:
        """The agent finished the task it holds: store `result` (JSON) where `get()`
        reads it, and end the task SUCCEEDED (its dependents are released).
        NotHeldError if the agent does not hold it; TaskCancelledError if it was
        cancelled (it is CANCELLED now, and the result is dropped)."""
        known_id(task_id)
        agent = agent_id_of(agent_id)
        check_json(result, "result")
        message = self._start_finishing(task_id, agent)
        with self.bq.broker_errors():
            self.bq.app.backend.mark_as_done(task_id, result, request=_request(
                task_id, agent, message))
        self._end(task_id, agent, TaskState.SUCCEEDED, finished_at=self.clock(), progress=1.0)

    def fail(
        self, task_id: str, agent_id: str, error: str, *, error_type: str = "Exception",
        traceback: str | None = None,
    ) -> None:
        """The agent could not do the task it holds: end it FAILED. `get()` raises
        TaskFailedError with remote type `error_type` (Name or module.Name), message
        `error` and `traceback`; the task enters the failed registry (`bq.retry`)."""
        known_id(task_id)
        agent = agent_id_of(agent_id)
        if not isinstance(error_type, str) or not _ERROR_TYPE.fullmatch(error_type) \
                or len(error_type) > MAX_NAME:
            raise ValidationError(f"error_type is a Python-style name such as 'ValueError' "
                                  f"or 'lab.RigJammed', not {shown(error_type)}")
        for what, text in (("error", error), ("traceback", traceback)):
            if text is not None and (not isinstance(text, str) or len(text) > MAX_ERROR
                                     or not encodable(text)):
                raise ValidationError(f"{what} is a string of at most {MAX_ERROR} characters")
        message = self._start_finishing(task_id, agent)
        with self.bq.broker_errors():
            self.bq.app.backend.mark_as_failure(
                task_id, _remote_exception(error_type, error), traceback=traceback,
                request=_request(task_id, agent, message),
            )
        self._end(task_id, agent, TaskState.FAILED, finished_at=self.clock(),
                  error=f"{error_type}: {error}")

    def cancel(self, task_id: str, agent_id: str, reason: str = "cancelled by agent") -> None:
        """The agent gives up the task it holds for good (not for another agent: that is
        `release`): it ends CANCELLED with `reason`, `get()` raises TaskCancelledError
        with it, and its dependents are settled as for any cancellation (cancelled, or
        run if they said on_dependency_failure="run"). A task cancelled by a producer
        meanwhile ends with that cancel's reason. NotHeldError if the agent does not
        hold the task."""
        known_id(task_id)
        agent = agent_id_of(agent_id)
        if (not isinstance(reason, str) or not reason or len(reason) > MAX_ERROR
                or not encodable(reason)):
            raise ValidationError(f"reason is a non-empty string of at most {MAX_ERROR} "
                                  f"characters, not {shown(reason)}")
        reply, _ = self._call(self._cancel, task_id, agent, reason)
        self._check_held(task_id, agent, reply)

    def release(self, task_id: str, agent_id: str) -> TaskState:
        """Give a held task back to the queue for another agent (its place kept).
        Returns its state now: QUEUED, or CANCELLED if it was cancelled meanwhile."""
        known_id(task_id)
        agent = agent_id_of(agent_id)
        reply, _ = self._call(self._release, task_id, agent)
        self._check_held(task_id, agent, reply)
        return TaskState(reply["state"])

    def sweep(self, tidy: bool = True) -> int:
        """Release every lease that ran out and queue every pull task that became due
        (claims do this too, a batch at a time); with `tidy`, also drop tasks cancelled
        while they waited from their queues. Returns how many tasks it moved."""
        moved = 0
        while True:
            count = int(self._run(self._sweep).get("moved") or 0)
            moved += count
            if count < SWEEP_BATCH:
                break
        if tidy:
            for name in self._read_types(refresh=True):
                moved += self._tidy_type(name)
        return moved

    def _tidy_type(self, name: str, batch: int = 500) -> int:
        dropped, start, key = 0, 0, self.keys.pull_ready(name)
        while True:
            with self.bq.broker_errors():
                ids = [str(i) for i in self.bq.redis.zrange(key, start, start + batch - 1)]
                if not ids:
                    return dropped
                with self.bq.redis.pipeline(transaction=False) as pipe:
                    for task_id in ids:
                        pipe.hget(self.keys.task(task_id), "state")
                    states = pipe.execute()
            ended = [i for i, s in zip(ids, states, strict=True)
                     if s is None or TaskState(s).terminal]
            if ended:
                dropped_now = int(self._run(self._tidy, name, *ended).get("dropped") or 0)
                dropped += dropped_now
                start -= dropped_now
            start += batch

    # -- plumbing -------------------------------------------------------------------------

    def _start_finishing(self, task_id: str, agent: str) -> Message | None:
        reply, message = self._call(self._begin, task_id, agent, FINISH_GRACE_S)
        if reply["verdict"] == "cancelled":
            raise TaskCancelledError(task_id, str(reply.get("error") or "cancelled"))
        self._check_held(task_id, agent, reply)
        return _readable(task_id, message) if message else None

    def _end(self, task_id: str, agent: str, state: TaskState, **fields: Any) -> None:
        flat: list[str | float] = [state.value]
        for key, value in fields.items():
            flat += [key, str(value)]
        reply, _ = self._call(self._finish, task_id, agent, *flat)
        self._check_held(task_id, agent, reply)

    @staticmethod
    def _check_held(task_id: str, agent: str, reply: Mapping[str, Any]) -> None:
        if reply.get("verdict") == "finishing":
            raise NotHeldError(task_id, agent, "it is being completed or failed already")
        if reply.get("verdict") != "not_held":
            return
        state, holder = reply.get("state"), reply.get("holder")
        if not state:
            raise UnknownTaskError(task_id)
        if state == TaskState.CANCELLED:
            raise TaskCancelledError(task_id, str(reply.get("error") or "cancelled"))
        if state == TaskState.RUNNING:
            detail = f"agent {holder!r} holds it" if holder else "it is not a pull task"
        elif state in (TaskState.QUEUED, TaskState.PENDING):
            detail = f"it is {state}, waiting for an agent (a lease that runs out puts it back)"
        else:
            detail = f"it has ended ({state})"
        raise NotHeldError(task_id, agent, detail)

    def _call(self, script: Any, *args: str | float) -> tuple[dict[str, Any], str | None]:
        """Run a pull script (ARGV: ns, now, ttl, then `args`); store what it revoked,
        send what it released; return its JSON reply and its second value (a message)."""
        argv: list[str | float] = [
            self.keys.namespace, self.clock(), self.bq.records.ttl_s, *args
        ]
        with self.bq.broker_errors():
            settled = settled_reply(script(args=argv))
            reply: dict[str, Any] = json.loads(settled.value)
            for task_id, reason in _list(reply.get("revoked")):
                self.bq.app.backend.mark_as_revoked(task_id, reason)
            if settled.released or settled.cancelled:
                self.bq.settle(settled.released, settled.cancelled)
        return reply, settled.extra

    def _run(self, script: Any, *args: str | float) -> dict[str, Any]:
        return self._call(script, *args)[0]


def _readable(task_id: str, raw: str) -> Message:
    """A pull task's stored message; one that cannot be read is logged and read as an
    empty one (the claim or the completion goes on, as for any other task)."""
    try:
        return Message.decode(raw)
    except ValidationError as exc:
        log.error("pull task %s: unreadable message (%s); read as empty", task_id, exc)
        return Message(handler="", payload={}, queue=PULL_QUEUE)


def _request(task_id: str, agent: str, message: Message | None) -> Context:
    """What Celery's backend stores with a result (result_extended), as a worker would:
    the handler, the payload (bq.retry resubmits it), the agent as the worker."""
    if message is None:  # its message is gone: store the result without what it said
        return Context(id=task_id, task=None, args=[None], kwargs={}, hostname=agent,
                       retries=0, delivery_info={"routing_key": PULL_QUEUE, "priority": None},
                       parent_id=None)
    return Context(
        id=task_id, task=message.handler, args=[message.payload], kwargs={},
        hostname=agent, retries=message.retries,
        delivery_info={"routing_key": PULL_QUEUE, "priority": message.priority},
        parent_id=message.parent_id,
    )
