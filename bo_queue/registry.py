"""The handler registry: what `@bo_queue.handler` and `@bq.handler` declare.

The registry is process-wide and app-agnostic. A worker imports the modules named in
BO_QUEUE_IMPORTS and turns every spec here into a Celery task (workers.runner); a producer
needs none of this, it submits by name.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from bo_queue.errors import ValidationError
from bo_queue.retry import NO_RETRY, RetryPolicy

if TYPE_CHECKING:
    from bo_queue.context import TaskContext

HandlerFn = Callable[[dict[str, Any], "TaskContext"], Any]
SuccessHook = Callable[["TaskContext", Any], None]
FailureHook = Callable[["TaskContext", BaseException], None]
RetryHook = Callable[["TaskContext", BaseException, float], None]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
CAPABILITY = re.compile(r"[a-z][a-z0-9_-]{0,31}")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|m|h)\s*")
_PERIOD_S = {"s": 1.0, "m": 60.0, "h": 3600.0}


class Resources(BaseModel):
    """What one run of a task needs (a handler's default, or a submit's): cores, memory
    and GPUs. A worker takes a task only while what it offers still fits it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = Field(default=0.0, ge=0, le=4096)
    memory_mb: float = Field(default=0.0, ge=0, le=2**40)
    gpu: int = Field(default=0, ge=0, le=1024)

    def fits(self, free: Resources) -> bool:
        return self.cpu <= free.cpu and self.memory_mb <= free.memory_mb and self.gpu <= free.gpu

    def describe(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v}


def parse_rate(rate: str) -> tuple[int, float]:
    """"10/s", "100/m", "5/h" -> (count, period in seconds)."""
    match = _RATE.fullmatch(rate)
    if match is None or int(match.group(1)) < 1:
        raise ValidationError(f"rate limit must look like '10/s', '100/m' or '5/h', got {rate!r}")
    return int(match.group(1)), _PERIOD_S[match.group(2)]


def capability_names(names: Any) -> tuple[str, ...]:
    """Sorted, unique, checked capability names."""
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    out = tuple(sorted(set(names)))
    bad = [n for n in out if not isinstance(n, str) or not CAPABILITY.fullmatch(n)]
    if bad:
        raise ValidationError(
            f"capability names are lowercase identifiers (a-z, 0-9, '_', '-'), got {bad}"
        )
    return out


@dataclass(frozen=True)
class HandlerSpec:
    name: str
    fn: HandlerFn
    queue: str | None = None  # None: the configured default queue
    retry: RetryPolicy = NO_RETRY
    time_limit_s: float | None = None
    on_success: SuccessHook | None = None
    on_failure: FailureHook | None = None
    on_retry: RetryHook | None = None
    # only workers that declare every one of these capabilities run it
    requires: tuple[str, ...] = ()
    resources: Resources | None = None  # what one run needs (a submit may say otherwise)
    max_concurrency: int | None = None  # runs at once across every worker
    rate_limit: str | None = None  # starts per period across every worker: "10/s"
    version: str | None = None  # recorded on each run; a submit may ask for it

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def describe(self) -> dict[str, Any]:
        """What a worker publishes about this handler (JSON; no code)."""
        return {
            "queue": self.queue,
            "retry": self.retry.describe(),
            "time_limit_s": self.time_limit_s,
            "module": getattr(self.fn, "__module__", None),
            "requires": list(self.requires),
            "resources": self.resources.describe() if self.resources else None,
            "max_concurrency": self.max_concurrency,
            "rate_limit": self.rate_limit,
            "version": self.version,
            "async": self.is_async,
        }


_lock = threading.Lock()
_handlers: dict[str, HandlerSpec] = {}


def register(spec: HandlerSpec) -> None:
    if not _NAME.fullmatch(spec.name):
        raise ValidationError(f"invalid handler name {spec.name!r}")
    if spec.time_limit_s is not None and spec.time_limit_s <= 0:
        raise ValidationError(f"time_limit must be positive, got {spec.time_limit_s}")
    if spec.max_concurrency is not None and spec.max_concurrency < 1:
        raise ValidationError(f"max_concurrency must be at least 1, got {spec.max_concurrency}")
    if spec.rate_limit is not None:
        parse_rate(spec.rate_limit)
    if spec.version is not None and not VERSION.fullmatch(spec.version):
        raise ValidationError(f"invalid handler version {spec.version!r}")
    capability_names(spec.requires)
    with _lock:
        old = _handlers.get(spec.name)
        if old is not None and _qualname(old.fn) != _qualname(spec.fn):
            raise ValidationError(
                f"handler {spec.name!r} is already declared by {_qualname(old.fn)}"
            )
        _handlers[spec.name] = spec


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def get(name: str) -> HandlerSpec | None:
    return _handlers.get(name)


def registered() -> dict[str, HandlerSpec]:
    with _lock:
        return dict(_handlers)


def handler(
    name: str | None = None,
    *,
    queue: str | None = None,
    retry: RetryPolicy | None = None,
    time_limit: float | None = None,
    on_success: SuccessHook | None = None,
    on_failure: FailureHook | None = None,
    on_retry: RetryHook | None = None,
    requires: tuple[str, ...] | list[str] = (),
    resources: Resources | dict[str, Any] | None = None,
    max_concurrency: int | None = None,
    rate_limit: str | None = None,
    version: str | None = None,
) -> Callable[[HandlerFn], HandlerFn]:
    """Declare a handler: `fn(payload: dict, ctx: TaskContext) -> JSON-serialisable`, or
    an `async def` one (run on an event loop in the worker).

    The name defaults to `module.function`. Returns the function unchanged, so it can
    still be called directly in unit tests. `requires`: capabilities a worker must declare
    to run it; `resources`: what one run needs (cpu, memory_mb, gpu); `max_concurrency`
    and `rate_limit` ("10/s"): limits across every worker; `version`: recorded on runs.
    """
    if isinstance(resources, dict):
        try:
            resources = Resources(**resources)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid resources: {exc}") from None

    def decorate(fn: HandlerFn) -> HandlerFn:
        register(
            HandlerSpec(
                name=f"{fn.__module__}.{fn.__name__}" if name is None else name,
                fn=fn,
                queue=queue,
                retry=retry or NO_RETRY,
                time_limit_s=time_limit,
                on_success=on_success,
                on_failure=on_failure,
                on_retry=on_retry,
                requires=capability_names(requires),
                resources=resources,
                max_concurrency=max_concurrency,
                rate_limit=rate_limit,
                version=version,
            )
        )
        return fn

    return decorate
