"""Class-based handlers: `bo_queue.Handler` and `bo_queue.register` (or `bq.register`).

A `Handler` subclass says with class attributes what `@handler` takes as arguments (same
names, meanings and defaults, `name` required) and implements `run(self, payload, ctx)`;
`on_retry`, `on_failure` and `on_success` are optional and take what the decorator's
hooks take. `register(cls)` registers it through `registry.handler`, exactly as the
decorator would, so workers serve it as they serve a decorated function.

Instances: one per process that runs the handler, made on first use (a run or a hook),
never at registration. Registration happens on import, in producers and in the worker's
parent process before it forks its pool: an instance made then would be built where it
never runs and its state (a connection, a loaded model) copied into every child.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from bo_queue import registry
from bo_queue.errors import ValidationError
from bo_queue.registry import Resources
from bo_queue.retry import RetryPolicy

if TYPE_CHECKING:
    from bo_queue.context import TaskContext

H = TypeVar("H", bound=type["Handler"])


class Handler:
    """The base of a class-based handler.

        @bo_queue.register
        class Fit(bo_queue.Handler):
            name = "models.fit"
            queue = "gpu"
            retry = RetryPolicy(max_retries=2, on=(ConnectionError,))

            def run(self, payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
                ...

    The attributes mean what `@handler`'s arguments mean; `run` may be `async def`.
    """

    name: ClassVar[str | None] = None
    queue: ClassVar[str | None] = None
    retry: ClassVar[RetryPolicy | None] = None
    time_limit: ClassVar[float | None] = None
    requires: ClassVar[tuple[str, ...] | list[str]] = ()
    resources: ClassVar[Resources | dict[str, Any] | None] = None
    max_concurrency: ClassVar[int | None] = None
    rate_limit: ClassVar[str | None] = None
    version: ClassVar[str | None] = None

    def run(self, payload: dict[str, Any], ctx: TaskContext) -> Any:
        """The task: `payload` in, a JSON-serialisable result out. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement run")

    def on_success(self, ctx: TaskContext, result: Any) -> None:
        """After a run succeeded (and its result is stored)."""

    def on_failure(self, ctx: TaskContext, error: BaseException) -> None:
        """After the task failed for good."""

    def on_retry(self, ctx: TaskContext, error: BaseException, delay_s: float) -> None:
        """When a failed run will be tried again in `delay_s` seconds."""


_lock = threading.Lock()
_instances: dict[type[Handler], tuple[int, Handler]] = {}


def instance(cls: type[Handler]) -> Handler:
    """This process's instance of `cls`, made on first use."""
    pid = os.getpid()
    made = _instances.get(cls)
    if made is not None and made[0] == pid:
        return made[1]
    with _lock:
        made = _instances.get(cls)
        if made is None or made[0] != pid:  # none yet, or one inherited through a fork
            made = (pid, cls())
            _instances[cls] = made
        return made[1]


def register(cls: H) -> H:
    """Register a `Handler` subclass as `@handler` would register a function; returns the
    class unchanged (so it works as a class decorator too). A second registration of the
    same class is a no-op; another class under a taken name is a `ValidationError`."""
    _check(cls)
    name = cls.name
    assert name is not None  # _check
    fn = _runner(cls)
    registry.handler(
        name,
        queue=cls.queue,
        retry=cls.retry,
        time_limit=cls.time_limit,
        on_success=_hook(cls, "on_success"),
        on_failure=_hook(cls, "on_failure"),
        on_retry=_hook(cls, "on_retry"),
        requires=cls.requires,
        resources=cls.resources,
        max_concurrency=cls.max_concurrency,
        rate_limit=cls.rate_limit,
        version=cls.version,
    )(fn)
    return cls


def handler_class(fn: Any) -> type[Handler] | None:
    """The class behind a registered handler function (`HandlerSpec.fn`), if it has one."""
    cls = getattr(fn, "handler_class", None)
    return cls if isinstance(cls, type) and issubclass(cls, Handler) else None


def _check(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Handler)) or cls is Handler:
        raise ValidationError(
            f"register() takes a subclass of bo_queue.Handler, got {cls!r}"
            + (" (decorate functions with @handler)" if callable(cls) else "")
        )
    where = f"handler class {cls.__module__}.{cls.__qualname__}"
    if not isinstance(cls.name, str) or not cls.name:
        raise ValidationError(f"{where} has no name: set the class attribute `name`")
    if cls.run is Handler.run:
        raise ValidationError(f"{where} does not implement run(self, payload, ctx)")
    if not callable(cls.run):
        raise ValidationError(f"{where}: run must be a method")
    for hook in ("on_success", "on_failure", "on_retry"):
        if not callable(getattr(cls, hook)):
            raise ValidationError(f"{where}: {hook} must be a method")
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise ValidationError(
            f"{where} must be constructible without arguments (workers call {cls.__name__}())"
        ) from None
    except ValueError:  # no signature to read (a C-level __init__): let the first use tell
        pass


def _runner(cls: type[Handler]) -> registry.HandlerFn:
    """The function the registry holds: this process's instance's `run`, plain or async."""
    fn: Any
    if inspect.iscoroutinefunction(cls.run):

        async def run_async(payload: dict[str, Any], ctx: TaskContext) -> Any:
            return await instance(cls).run(payload, ctx)

        fn = run_async
    else:

        def run(payload: dict[str, Any], ctx: TaskContext) -> Any:
            return instance(cls).run(payload, ctx)

        fn = run
    # named after the class, so the registry's "already declared by" check compares classes
    functools.update_wrapper(fn, cls.run, assigned=("__doc__",), updated=())
    fn.__module__ = cls.__module__
    fn.__qualname__ = f"{cls.__qualname__}.run"
    fn.__name__ = "run"
    fn.handler_class = cls
    result: registry.HandlerFn = fn
    return result


def _hook(cls: type[Handler], kind: str) -> Any:
    """A hook for the spec, or None when `cls` keeps the base class's no-op."""
    if getattr(cls, kind) is getattr(Handler, kind):
        return None

    def hook(ctx: TaskContext, value: Any, *extra: Any) -> None:
        getattr(instance(cls), kind)(ctx, value, *extra)

    hook.__module__ = cls.__module__
    hook.__qualname__ = f"{cls.__qualname__}.{kind}"
    hook.__name__ = kind
    return hook
