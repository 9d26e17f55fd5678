"""The handler registry: what `@bo_queue.handler` and `@bq.handler` declare.

The registry is process-wide and app-agnostic. A worker imports the modules named in
BO_QUEUE_IMPORTS and turns every spec here into a Celery task (workers.runner); a producer
needs none of this, it submits by name.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bo_queue.errors import ValidationError
from bo_queue.retry import NO_RETRY, RetryPolicy

if TYPE_CHECKING:
    from bo_queue.context import TaskContext

HandlerFn = Callable[[dict[str, Any], "TaskContext"], Any]
SuccessHook = Callable[["TaskContext", Any], None]
FailureHook = Callable[["TaskContext", BaseException], None]
RetryHook = Callable[["TaskContext", BaseException, float], None]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")


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

    def describe(self) -> dict[str, Any]:
        """What a worker publishes about this handler (JSON; no code)."""
        return {
            "queue": self.queue,
            "retry": self.retry.describe(),
            "time_limit_s": self.time_limit_s,
            "module": getattr(self.fn, "__module__", None),
        }


_lock = threading.Lock()
_handlers: dict[str, HandlerSpec] = {}


def register(spec: HandlerSpec) -> None:
    if not _NAME.fullmatch(spec.name):
        raise ValidationError(f"invalid handler name {spec.name!r}")
    if spec.time_limit_s is not None and spec.time_limit_s <= 0:
        raise ValidationError(f"time_limit must be positive, got {spec.time_limit_s}")
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
) -> Callable[[HandlerFn], HandlerFn]:
    """Declare a handler: `fn(payload: dict, ctx: TaskContext) -> JSON-serialisable`.

    The name defaults to `module.function`. Returns the function unchanged, so it can
    still be called directly in unit tests.
    """

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
            )
        )
        return fn

    return decorate
