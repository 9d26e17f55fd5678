"""Class-based handlers (bo_queue.Handler, bo_queue.register): registered as @handler
registers a function. Names are unique per test: the registry outlives tests."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import bo_queue
from bo_queue import BOQueue, Handler, RetryPolicy, ValidationError, handlers, registry
from bo_queue.registry import Resources

POLICY = RetryPolicy(max_retries=2, backoff=0.5, jitter=False, on=(ConnectionError,))


def test_attributes_map_to_the_spec() -> None:
    @bo_queue.register
    class Full(Handler):
        name = "unit.cls.full"
        queue = "bo"
        retry = POLICY
        time_limit = 30
        requires = ("gpu", "cuda")
        resources = Resources(cpu=2, gpu=1)
        max_concurrency = 3
        rate_limit = "10/s"
        version = "1.2"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return payload

    spec = registry.get("unit.cls.full")
    assert spec is not None
    assert (spec.queue, spec.retry, spec.time_limit_s) == ("bo", POLICY, 30)
    assert spec.requires == ("cuda", "gpu")
    assert spec.resources == Resources(cpu=2, gpu=1)
    assert (spec.max_concurrency, spec.rate_limit, spec.version) == (3, "10/s", "1.2")
    assert not spec.is_async
    assert handlers.handler_class(spec.fn) is Full
    described = spec.describe()
    assert described["module"] == __name__
    assert described["requires"] == ["cuda", "gpu"]


def test_resources_may_be_a_dict_as_for_the_decorator() -> None:
    def run(self: Any, payload: dict[str, Any], ctx: Any) -> Any:
        return None

    attrs = {"name": "unit.cls.res-dict", "resources": {"memory_mb": 512}, "run": run}
    bo_queue.register(type("ResDict", (Handler,), attrs))
    spec = registry.get("unit.cls.res-dict")
    assert spec is not None and spec.resources == Resources(memory_mb=512)


def test_defaults_are_the_decorators() -> None:
    @bo_queue.register
    class Plain(Handler):
        name = "unit.cls.defaults"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return None

    @bo_queue.handler("unit.cls.defaults-fn")
    def plain(payload: dict[str, Any], ctx: Any) -> None:
        return None

    cls_spec, fn_spec = registry.get("unit.cls.defaults"), registry.get("unit.cls.defaults-fn")
    assert cls_spec is not None and fn_spec is not None
    ignore = {"module"}
    assert {k: v for k, v in cls_spec.describe().items() if k not in ignore} == {
        k: v for k, v in fn_spec.describe().items() if k not in ignore
    }
    assert cls_spec.retry is fn_spec.retry  # NO_RETRY
    # hooks the class does not override are not hooks at all
    assert (cls_spec.on_success, cls_spec.on_failure, cls_spec.on_retry) == (None, None, None)


def test_run_goes_to_one_instance_per_process_made_on_first_use() -> None:
    made: list[object] = []

    class Counting(Handler):
        name = "unit.cls.instance"

        def __init__(self) -> None:
            made.append(self)
            self.calls = 0

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            self.calls += 1
            return {"calls": self.calls, "x": payload["x"]}

    assert bo_queue.register(Counting) is Counting  # returned unchanged
    assert made == []  # registration makes no instance
    spec = registry.get("unit.cls.instance")
    assert spec is not None
    assert spec.fn({"x": 1}, None) == {"calls": 1, "x": 1}
    assert spec.fn({"x": 2}, None) == {"calls": 2, "x": 2}
    assert len(made) == 1 and handlers.instance(Counting) is made[0]


def test_an_instance_inherited_through_a_fork_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Forked(Handler):
        name = "unit.cls.fork"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return id(self)

    parent = handlers.instance(Forked)
    pid = os.getpid()
    monkeypatch.setattr(handlers.os, "getpid", lambda: pid + 1)  # as a forked child sees it
    child = handlers.instance(Forked)
    assert child is not parent and handlers.instance(Forked) is child


def test_hooks_are_the_instances_methods() -> None:
    calls: list[tuple[Any, ...]] = []

    @bo_queue.register
    class Hooked(Handler):
        name = "unit.cls.hooks"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return "ok"

        def on_success(self, ctx: Any, result: Any) -> None:
            calls.append(("success", self, ctx, result))

        def on_failure(self, ctx: Any, error: BaseException) -> None:
            calls.append(("failure", self, ctx, error))

        def on_retry(self, ctx: Any, error: BaseException, delay_s: float) -> None:
            calls.append(("retry", self, ctx, error, delay_s))

    spec = registry.get("unit.cls.hooks")
    assert spec is not None
    assert spec.on_success and spec.on_failure and spec.on_retry
    assert spec.on_success.__name__ == "on_success"  # what the worker logs if it raises
    ctx, err = object(), ValueError("boom")
    spec.on_success(ctx, "ok")  # type: ignore[arg-type]
    spec.on_failure(ctx, err)  # type: ignore[arg-type]
    spec.on_retry(ctx, err, 1.5)  # type: ignore[arg-type]
    me = handlers.instance(Hooked)
    assert calls == [
        ("success", me, ctx, "ok"), ("failure", me, ctx, err), ("retry", me, ctx, err, 1.5),
    ]


def test_hooks_run_through_the_workers_hook_runner() -> None:
    """workers.runner calls a spec's hooks as hook(ctx, value, *extra) off the request."""
    from types import SimpleNamespace

    from workers.runner import _hook

    seen: list[Any] = []

    @bo_queue.register
    class Retrying(Handler):
        name = "unit.cls.runner-hook"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return None

        def on_retry(self, ctx: Any, error: BaseException, delay_s: float) -> None:
            seen.append((ctx.handler, str(error), delay_s))

    spec = registry.get("unit.cls.runner-hook")
    assert spec is not None
    ctx = SimpleNamespace(handler="unit.cls.runner-hook")
    _hook(spec.on_retry, SimpleNamespace(bo_context=ctx), RuntimeError("again"), 0.25)
    assert seen == [("unit.cls.runner-hook", "again", 0.25)]


def test_async_run_makes_an_async_handler() -> None:
    @bo_queue.register
    class Async(Handler):
        name = "unit.cls.async"

        async def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            await asyncio.sleep(0)
            return payload["x"] * 2

    spec = registry.get("unit.cls.async")
    assert spec is not None and spec.is_async
    assert asyncio.run(spec.fn({"x": 21}, None)) == 42
    assert spec.describe()["async"] is True


def test_boqueue_register_is_the_module_level_function() -> None:
    assert BOQueue.register is bo_queue.register is handlers.register

    class ViaFacade(Handler):
        name = "unit.cls.facade"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return None

    BOQueue.register(ViaFacade)
    spec = registry.get("unit.cls.facade")
    assert spec is not None and handlers.handler_class(spec.fn) is ViaFacade


def test_registering_the_same_class_twice_is_fine() -> None:
    class Twice(Handler):
        name = "unit.cls.twice"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return None

    bo_queue.register(Twice)
    bo_queue.register(Twice)
    spec = registry.get("unit.cls.twice")
    assert spec is not None and handlers.handler_class(spec.fn) is Twice


def test_a_taken_name_is_rejected() -> None:
    class First(Handler):
        name = "unit.cls.clash"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return 1

    class Second(Handler):
        name = "unit.cls.clash"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return 2

    bo_queue.register(First)
    with pytest.raises(ValidationError, match=r"already declared by .*First\.run"):
        bo_queue.register(Second)

    def clash_fn(payload: dict[str, Any], ctx: Any) -> None:
        return None

    with pytest.raises(ValidationError, match=r"already declared by .*First\.run"):
        bo_queue.handler("unit.cls.clash")(clash_fn)
    spec = registry.get("unit.cls.clash")
    assert spec is not None and handlers.handler_class(spec.fn) is First


def test_a_class_without_a_name_is_rejected() -> None:
    class Nameless(Handler):
        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return None

    with pytest.raises(ValidationError, match=r"Nameless has no name: set the class attribute"):
        bo_queue.register(Nameless)


def test_a_class_without_run_is_rejected() -> None:
    class Runless(Handler):
        name = "unit.cls.runless"

    with pytest.raises(ValidationError, match=r"Runless does not implement run"):
        bo_queue.register(Runless)
    assert registry.get("unit.cls.runless") is None


@pytest.mark.parametrize("thing", [object(), "t.name", Handler])
def test_not_a_handler_subclass_is_rejected(thing: Any) -> None:
    with pytest.raises(ValidationError, match=r"subclass of bo_queue.Handler"):
        bo_queue.register(thing)


def test_a_plain_class_or_function_is_rejected_with_a_hint() -> None:
    class Lookalike:
        name = "unit.cls.lookalike"

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return None

    def fn(payload: dict[str, Any], ctx: Any) -> None:
        return None

    for thing in (Lookalike, fn):
        with pytest.raises(ValidationError, match=r"subclass of bo_queue.Handler, got .*@handler"):
            bo_queue.register(thing)  # type: ignore[type-var]
    assert registry.get("unit.cls.lookalike") is None


def test_a_class_that_needs_constructor_arguments_is_rejected() -> None:
    class NeedsArgs(Handler):
        name = "unit.cls.args"

        def __init__(self, model: str) -> None:
            self.model = model

        def run(self, payload: dict[str, Any], ctx: Any) -> Any:
            return self.model

    with pytest.raises(ValidationError, match=r"constructible without arguments"):
        bo_queue.register(NeedsArgs)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"name": "bad name"}, "invalid handler name"),
        ({"name": "unit.cls.bad-limit", "time_limit": 0}, "time_limit must be positive"),
        ({"name": "unit.cls.bad-rate", "rate_limit": "fast"}, "rate limit must look like"),
        ({"name": "unit.cls.bad-cap", "requires": ["GPU"]}, "capability names"),
        ({"name": "unit.cls.bad-res", "resources": {"cpus": 1}}, "invalid resources"),
        ({"name": "", }, "has no name"),
    ],
)
def test_bad_attributes_are_checked_as_the_decorator_checks_them(
    attrs: dict[str, Any], message: str
) -> None:
    def run(self: Any, payload: dict[str, Any], ctx: Any) -> Any:
        return None

    cls = type("Bad", (Handler,), {**attrs, "run": run})
    with pytest.raises(ValidationError, match=message):
        bo_queue.register(cls)
    assert registry.get(attrs["name"]) is None


def test_the_base_run_raises() -> None:
    with pytest.raises(NotImplementedError):
        Handler().run({}, None)  # type: ignore[arg-type]
