"""TaskRequest, one submission validated at the edge, and Plan, what it becomes once the
kernel has checked it against the handler directory, the queues and the clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bo_queue.core.dependencies import OnDependencyFailure
from bo_queue.core.handle import TaskHandle
from bo_queue.errors import ValidationError, shown
from bo_queue.registry import VERSION, Resources
from bo_queue.retry import RetryPolicy
from bo_queue.states import Priority, PriorityInput
from bo_queue.validation import TASK_ID, TASK_ID_PATTERN, check_json, encodable, problems

MAX_METADATA_BYTES = 64 * 1024  # a task's metadata as compact JSON
MAX_TIME_LIMIT_S = 366 * 86400.0  # Core.check holds a limit below visibility_timeout_s too


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
    # this task's own retry policy and time limit (s), instead of its handler's
    retry: RetryPolicy | None = None
    time_limit: float | None = Field(default=None, gt=0, le=MAX_TIME_LIMIT_S)
    # kept on the record for people and filters (bq.tasks(name=, metadata=)), never sent
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    metadata: dict[str, Any] | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Priority:
        return _priority(value)

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
        bad = [i for i in ids if not TASK_ID_PATTERN.fullmatch(i)]
        if bad:
            raise ValueError(f"not task ids: {', '.join(map(shown, bad[:5]))}")
        return ids

    @field_validator("name", "description")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _text(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _metadata(value)

    @field_validator("retry")
    @classmethod
    def _retry(cls, policy: RetryPolicy | None) -> RetryPolicy | None:
        if policy is not None:  # it travels by name: a worker must read the same policy
            try:
                RetryPolicy(**policy.describe())
            except ValidationError as exc:
                raise ValueError(f"cannot be sent with the task: {exc}") from None
        return policy

    @field_validator("expires")
    @classmethod
    def _expires(cls, value: float | datetime | None) -> float | datetime | None:
        if isinstance(value, int | float) and not value > 0:
            raise ValueError("expires (seconds from now) must be positive")
        return value


class TaskUpdate(BaseModel):
    """What `bq.update` changes on a task that has not started; None leaves it as it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    priority: PriorityInput | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    metadata: dict[str, Any] | None = None  # replaces the task's metadata

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Priority | None:
        return None if value is None else _priority(value)

    @field_validator("name", "description")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _text(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _metadata(value)


def _priority(value: Any) -> Priority:
    plain = isinstance(value, str) and len(value) <= 20
    level = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9
    if not (isinstance(value, Priority) or plain or level):
        # not for Priority.parse's message: repr() of a 5,000-digit int or of a list
        # nested 100,000 deep raises (ValueError, RecursionError)
        names = ", ".join(Priority.__members__)
        raise ValueError(f"unknown priority {shown(value)}; use one of {names}")
    return Priority.parse(value)


def _text(value: str | None) -> str | None:
    if value is not None and not encodable(value):
        raise ValueError("must be a UTF-8 string (no lone surrogates)")
    return value


def _metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        check_json(value, "metadata", MAX_METADATA_BYTES)  # a ValueError pydantic reports
    return value


class Plan:
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


def task_request(**fields: Any) -> TaskRequest:
    """A TaskRequest from keyword arguments, or ValidationError listing what is wrong."""
    try:
        return TaskRequest(**fields)
    except pydantic.ValidationError as exc:
        raise ValidationError(problems(exc, "request")) from None
