"""Message: one task message, as bo_queue builds, keeps and sends it.

A submit builds it from its Plan; a worker builds it again for a retry it holds in
Redis (workers.runner). It is kept as JSON in the outbox until a worker starts the task
(core/outbox.py), in the held schedule until it is due (core/delays.py), with a
dependent task until its dependencies end (core/records.py), and in the pull store until
an agent claims it (core/pull.py); each reads it back with `Message.decode`.

`Message.envelope` turns it into Celery's task message (protocol 2: the payload as the one
argument, the rest as headers; `kwargsrepr`: what Flower shows of the task's name and
metadata) exactly as kombu's Redis transport keeps it in a queue list, and
`Message.broker_list` names that list, so that a submit writes it in the same round trip
as its record (Core.send), with no kombu producer in between. The shape is kombu's and
Celery's (tests/integration/test_envelope.py pins it against `send_task` and a worker):
pyproject pins the kombu versions it was tested on.

Messages already in Redis keep decoding when fields are added: a field a message lacks
takes its default, and a field this version does not know is ignored.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from typing import Any

import pydantic
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from pydantic import BaseModel, ConfigDict

from bo_queue.errors import ValidationError
from bo_queue.validation import problems, utc

KWARGSREPR_MAX = 1024  # characters, as Celery's own kwargsrepr (amqp.kwargsrepr_maxsize)
HARD_LIMIT_GRACE_S = 5.0  # the soft time limit raises in the handler; the hard one kills it
ARGSREPR_MAX, REPR_MAXLEVELS = 1024, 3  # Celery's argsrepr_maxsize, task_repr_maxlevels
# Celery's embedded options of a task with no callbacks, no chain and no chord
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED)
_ORIGIN: dict[int, str] = {}  # Celery's anon_nodename() of this process, by pid (forks)


class Message(BaseModel):
    """What a task is sent as. Frozen: a changed message is a new one (model_copy)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    handler: str
    payload: dict[str, Any]
    queue: str
    priority: int | None = None  # the broker priority, 0 (highest) to 9; None: the default
    due_at: float | None = None  # unix time it may start; None: now
    expires_at: float | None = None  # unix time after which it must not start
    retries: int = 0  # retries before this send
    parent_id: str | None = None  # the task that spawned it
    resources: dict[str, int | float] | None = None  # a submit's own resources (admission)
    study: dict[str, Any] | None = None  # a study's evaluation: {"study_id", "trial_index"}
    # What Flower shows as the task's kwargs (Celery's kwargsrepr header; our tasks take
    # none): its name, description, metadata and created_by. Flower's task name stays the
    # handler, which its filters and charts group by.
    kwargsrepr: str | None = None
    retry: dict[str, Any] | None = None  # a submit's own RetryPolicy, described (by name)
    time_limit: float | None = None  # a submit's own time limit (s), over the handler's

    def encode(self) -> str:
        """The JSON kept in Redis, as json.dumps writes it: what check_json accepted
        (lone surrogates included, escaped) is what gets stored."""
        return json.dumps(self.model_dump())

    @classmethod
    def decode(cls, raw: str | bytes) -> Message:
        """A message from the JSON `encode` wrote (or an older bo_queue did);
        ValidationError if it is not one."""
        try:  # json.loads, as encode writes with json.dumps (lone surrogates and all)
            return cls.model_validate(json.loads(raw))
        except pydantic.ValidationError as exc:  # before ValueError: it is one
            raise ValidationError(f"not a task message: {problems(exc)}") from None
        except (ValueError, RecursionError) as exc:  # not JSON
            raise ValidationError(f"not a task message: {exc}") from None

    def headers(self) -> dict[str, Any] | None:
        """The headers that travel with it to the worker (and with Celery's retries)."""
        headers: dict[str, Any] = {}
        if self.resources:  # the worker's admission reads them
            headers["bo_resources"] = self.resources
        if self.study:  # workers.study_step reports only evaluations so marked
            headers["bo_study"] = self.study
        if self.retry:  # workers.runner retries by it instead of the handler's policy
            headers["bo_retry"] = self.retry
        return headers or None

    def time_limits(self) -> dict[str, Any]:
        """Celery's per-message limits (its `timelimit` header, which prefork workers
        enforce and Task.retry keeps): the soft one raises, the hard one kills. (Any:
        celery-types says int, Celery takes seconds as floats.)"""
        if self.time_limit is None:
            return {}
        return {"soft_time_limit": self.time_limit,
                "time_limit": self.time_limit + HARD_LIMIT_GRACE_S}

    def broker_priority(self) -> int:
        """The priority list it goes to (0, served first, to 9): kombu's, which takes a
        message without a priority as 0."""
        return max(0, min(9, self.priority or 0))

    def broker_list(self, prefix: str) -> str:
        """The Redis list kombu's transport keeps it in until a worker takes it (its
        `_q_for_pri` with priority steps 0..9 and ":" as separator, under `prefix`, the
        transport's global key prefix)."""
        priority = self.broker_priority()
        return f"{prefix}{self.queue}:{priority}" if priority else prefix + self.queue

    def envelope(self, task_id: str, reply_to: str = "", now: float | None = None) -> str:
        """The task message as kombu's Redis transport keeps it in `broker_list`: what
        Celery's send_task (task protocol 2, JSON, base64 body) and kombu's publish make
        of it, for a worker to take with BRPOP. `reply_to`: the producer's app oid, as
        Celery sets it; `now`: the clock an eta is judged by (a due time already past
        is none)."""
        now = time.time() if now is None else now
        # json.dumps([args, {}, _EMBED]), with the constant part encoded once
        body = f"[[{json.dumps(self.payload)}], {{}}, {_EMBED_JSON}]".encode()
        headers: dict[str, Any] = {
            "lang": "py", "task": self.handler, "id": task_id, "shadow": None,
            "eta": utc(self.due_at).isoformat() if self.due_at and self.due_at > now else None,
            "expires": utc(self.expires_at).isoformat() if self.expires_at else None,
            "group": None, "group_index": None, "retries": self.retries,
            "timelimit": ([self.time_limit + HARD_LIMIT_GRACE_S, self.time_limit]
                          if self.time_limit is not None else [None, None]),
            "root_id": task_id, "parent_id": self.parent_id,
            "argsrepr": argsrepr(self.payload),
            "kwargsrepr": self.kwargsrepr if self.kwargsrepr is not None else "{}",
            "origin": _origin(), "ignore_result": None, "replaced_task_nesting": 0,
            "stamped_headers": None, "stamps": {},
            **(self.headers() or {}),
        }
        return json.dumps({
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8", "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id, "reply_to": reply_to, "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": self.broker_priority(), "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        })


def _origin() -> str:
    pid = os.getpid()
    if pid not in _ORIGIN:
        _ORIGIN.clear()
        _ORIGIN[pid] = anon_nodename()
    return _ORIGIN[pid]


def argsrepr(payload: Any) -> str:
    """The `argsrepr` of a task whose one argument is `payload`, as Celery's send_task
    writes it: saferepr([payload], ARGSREPR_MAX, maxlevels=REPR_MAXLEVELS). A JSON payload
    whose repr fits is written here directly, by saferepr's rules (saferepr cuts nothing
    then; its token stream cost a quarter of a batched submit); the rest by saferepr."""
    parts: list[str] = []
    if _render([payload], 0, parts) and sum(map(len, parts)) < ARGSREPR_MAX:
        return "".join(parts)
    return saferepr([payload], ARGSREPR_MAX, maxlevels=REPR_MAXLEVELS)


def _render(value: Any, depth: int, parts: list[str]) -> bool:
    """saferepr's text of a JSON value inside `depth` open containers, uncut, onto
    `parts`; False for a value that is not JSON (saferepr renders it instead)."""
    if isinstance(value, str):
        parts.append(_quoted(value))
    elif value is None:
        parts.append("None")
    elif isinstance(value, bool | int | float):
        parts.append(str(value))
    elif isinstance(value, dict | list):
        ends = "{}" if isinstance(value, dict) else "[]"
        if depth >= REPR_MAXLEVELS:  # saferepr's cut of a container this deep
            parts.append(ends[0] + "..." + ends[1])
            return True
        parts.append(ends[0])
        keyed = isinstance(value, dict)
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for i, (key, item) in enumerate(pairs):
            if i:
                parts.append(", ")
            if keyed:
                if not isinstance(key, str):
                    return False
                parts.append(_quoted(key) + ": ")
            if not _render(item, depth + 1, parts):
                return False
        parts.append(ends[1])
    else:
        return False
    return True


def _quoted(text: str) -> str:
    """saferepr's quoting of a string: single quotes, only they escaped (not repr's)."""
    return "'" + text.replace("'", "\\'") + "'"


def kwargsrepr(**fields: Any) -> str | None:
    """The `kwargsrepr` of a task with these fields (those given), cut as Celery cuts its
    own reprs; None when none is given."""
    given = {name: value for name, value in fields.items() if value is not None}
    return saferepr(given, KWARGSREPR_MAX) if given else None


def evaluation_of(marker: object) -> tuple[str, int] | None:
    """(study id, trial index) of a `study` marker (the `bo_study` header) the study step
    wrote; None for anything else."""
    if not isinstance(marker, dict):
        return None
    study_id, index = marker.get("study_id"), marker.get("trial_index")
    if not isinstance(study_id, str) or isinstance(index, bool) or not isinstance(index, int):
        return None
    return study_id, index


def envelope_task_id(raw: str) -> str | None:
    """The task id of a kombu message as Redis keeps it: in a queue list, or in the
    unacked hash as [message, exchange, routing key]; None if it is not one."""
    try:
        envelope = json.loads(raw)
        if isinstance(envelope, list):
            envelope = envelope[0]
        return str(envelope["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None
