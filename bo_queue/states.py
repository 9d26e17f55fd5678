"""The task state model and the five priorities, with Celery's vocabulary mapped in one place."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated

from pydantic import WithJsonSchema


class TaskState(StrEnum):
    """Where a task is in its life; the terminal ones (TERMINAL_STATES) never change."""

    PENDING = "PENDING"  # accepted, not yet handed to the broker (delayed or waiting)
    QUEUED = "QUEUED"  # in a broker queue, waiting for a worker
    PAUSED = "PAUSED"  # held back by bq.pause until bq.resume; no worker starts it
    RUNNING = "RUNNING"  # a worker is executing the handler
    RETRYING = "RETRYING"  # failed with a retryable error; waiting out its backoff
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"  # `expires` passed before a worker started it

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[TaskState] = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED}
)

_FROM_CELERY = {
    "PENDING": TaskState.PENDING,  # Celery's PENDING also means "unknown id"
    "RECEIVED": TaskState.QUEUED,
    "STARTED": TaskState.RUNNING,
    "RETRY": TaskState.RETRYING,
    "SUCCESS": TaskState.SUCCEEDED,
    "FAILURE": TaskState.FAILED,
    "REVOKED": TaskState.CANCELLED,
    "REJECTED": TaskState.QUEUED,  # rejected messages go back to the queue (worker lost)
    "IGNORED": TaskState.CANCELLED,
}


def from_celery_state(state: str) -> TaskState:
    """The one place where Celery's states become bo_queue's."""
    return _FROM_CELERY.get(state, TaskState.PENDING)


class Priority(IntEnum):
    """The seeds' five levels; a higher level runs first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3
    CRITICAL = 4

    @property
    def broker_priority(self) -> int:
        """The Redis transport's priority list (0..9, where 0 is served first)."""
        return _BROKER_PRIORITY[self]

    @classmethod
    def from_broker(cls, broker_priority: int | None) -> Priority:
        """The level whose broker list a message came from (None: the default level)."""
        if broker_priority is None:
            return cls.NORMAL
        return min(cls, key=lambda p: (abs(p.broker_priority - broker_priority), -p))

    @classmethod
    def parse(cls, value: object) -> Priority:
        """Accept a Priority, its name in any case, or its level; anything else is an error."""
        from bo_queue.errors import ValidationError

        if isinstance(value, Priority):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and value in set(cls):
            return cls(value)
        names = ", ".join(cls.__members__)
        raise ValidationError(f"unknown priority {value!r}; use one of {names}")


_BROKER_PRIORITY = {
    Priority.CRITICAL: 0,
    Priority.URGENT: 2,
    Priority.HIGH: 4,
    Priority.NORMAL: 6,
    Priority.LOW: 9,
}

_NAMES = ["LOW", "NORMAL", "HIGH", "URGENT", "CRITICAL"]

# A priority as requests may give it (Priority.parse): a level or a name in any case. The
# JSON schema (OpenAPI) says so; validation is the model's own `Priority.parse` validator.
PriorityInput = Annotated[Priority, WithJsonSchema({
    "anyOf": [
        {"type": "integer", "enum": [0, 1, 2, 3, 4]},
        {"type": "string", "enum": _NAMES + [n.lower() for n in _NAMES]},
    ],
    "title": "Priority",
    "description": "0-4, or LOW, NORMAL, HIGH, URGENT, CRITICAL (any case)",
})]
