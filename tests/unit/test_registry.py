"""The process-wide handler registry. Names are unique per test: the registry outlives tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

import bo_queue
from bo_queue import BOQueue, RetryPolicy, ValidationError, registry


def test_default_name_is_module_and_function() -> None:
    def reg_default_name(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"seen": payload}

    returned = bo_queue.handler()(reg_default_name)
    name = f"{__name__}.reg_default_name"
    assert name == "tests.unit.test_registry.reg_default_name"
    spec = registry.get(name)
    assert spec is not None
    assert spec.fn is reg_default_name
    assert returned is reg_default_name  # unchanged: still callable directly
    assert returned({"a": 1}, None) == {"seen": {"a": 1}}
    assert name in registry.registered()


def test_options_are_recorded() -> None:
    policy = RetryPolicy(max_retries=2, on=(ConnectionError,))

    @bo_queue.handler("unit.reg.options", queue="bo", retry=policy, time_limit=30)
    def reg_options(payload: dict[str, Any], ctx: Any) -> None:
        return None

    spec = registry.get("unit.reg.options")
    assert spec is not None
    assert (spec.queue, spec.retry, spec.time_limit_s) == ("bo", policy, 30)


def test_no_retry_by_default() -> None:
    @bo_queue.handler("unit.reg.no-retry")
    def reg_no_retry(payload: dict[str, Any], ctx: Any) -> None:
        return None

    spec = registry.get("unit.reg.no-retry")
    assert spec is not None
    assert spec.retry.max_retries == 0
    assert spec.queue is None and spec.time_limit_s is None


def test_same_name_from_a_different_function_is_rejected() -> None:
    @bo_queue.handler("unit.reg.clash")
    def reg_first(payload: dict[str, Any], ctx: Any) -> None:
        return None

    def reg_second(payload: dict[str, Any], ctx: Any) -> None:
        return None

    with pytest.raises(ValidationError, match=r"already declared by .*reg_first"):
        bo_queue.handler("unit.reg.clash")(reg_second)
    spec = registry.get("unit.reg.clash")
    assert spec is not None and spec.fn is reg_first  # the first declaration stands


def test_redeclaring_the_same_function_is_fine() -> None:
    def reg_again(payload: dict[str, Any], ctx: Any) -> None:
        return None

    bo_queue.handler("unit.reg.again")(reg_again)
    bo_queue.handler("unit.reg.again", queue="evaluate")(reg_again)  # e.g. a module reload
    spec = registry.get("unit.reg.again")
    assert spec is not None and spec.fn is reg_again and spec.queue == "evaluate"


def test_boqueue_handler_is_the_module_level_decorator() -> None:
    assert BOQueue.handler is bo_queue.handler

    @BOQueue.handler("unit.reg.via-class")
    def reg_via_class(payload: dict[str, Any], ctx: Any) -> None:
        return None

    spec = registry.get("unit.reg.via-class")
    assert spec is not None and spec.fn is reg_via_class


@pytest.mark.parametrize(
    "name", ["", "has space", "9starts", "-dash", "a/b", "x" * 201, "é.accent"], ids=repr
)
def test_invalid_names_are_rejected(name: str) -> None:
    def reg_invalid(payload: dict[str, Any], ctx: Any) -> None:
        return None

    with pytest.raises(ValidationError, match="invalid handler name"):
        registry.register(registry.HandlerSpec(name=name, fn=reg_invalid))
    assert registry.get(name) is None


def test_name_with_a_trailing_newline_is_rejected() -> None:
    # registry._NAME is used with re.match and ends in `$`, which also matches before a
    # final "\n"; a name like this would be published and registered as a Celery task.
    def reg_newline(payload: dict[str, Any], ctx: Any) -> None:
        return None

    with pytest.raises(ValidationError, match="invalid handler name"):
        bo_queue.handler("unit.reg.newline\n")(reg_newline)


@pytest.mark.parametrize(
    "name", ["u", "_unit_reg_private", "unit.reg:fn", "unit-reg_c.d9", "u" + "x" * 199]
)
def test_valid_names(name: str) -> None:
    def reg_valid(payload: dict[str, Any], ctx: Any) -> None:
        return None

    bo_queue.handler(name)(reg_valid)
    spec = registry.get(name)
    assert spec is not None and spec.fn is reg_valid


@pytest.mark.parametrize("limit", [0, -1, -0.5])
def test_non_positive_time_limit_is_rejected(limit: float) -> None:
    def reg_limit(payload: dict[str, Any], ctx: Any) -> None:
        return None

    name = f"unit.reg.limit{limit}"
    with pytest.raises(ValidationError, match="time_limit"):
        bo_queue.handler(name, time_limit=limit)(reg_limit)
    assert registry.get(name) is None


def test_describe_is_json() -> None:
    @bo_queue.handler(
        "unit.reg.describe", queue="evaluate", time_limit=12.5,
        retry=RetryPolicy(max_retries=4, backoff=2.0, backoff_max=8.0, on=(TimeoutError,)),
    )
    def reg_describe(payload: dict[str, Any], ctx: Any) -> None:
        return None

    spec = registry.get("unit.reg.describe")
    assert spec is not None
    described = json.loads(json.dumps(spec.describe()))
    assert described == {
        "queue": "evaluate",
        "retry": {
            "max_retries": 4, "backoff": 2.0, "backoff_max": 8.0, "jitter": True,
            "on": ["builtins.TimeoutError"],
        },
        "time_limit_s": 12.5,
        "module": __name__,
        "requires": [], "resources": None, "max_concurrency": None, "rate_limit": None,
        "version": None, "async": False,
    }


def test_placement_and_limit_options_are_checked_and_described() -> None:
    @bo_queue.handler("unit.reg.placed", requires=["gpu", "fpga", "gpu"],
                      resources={"cpu": 2, "gpu": 1}, max_concurrency=3, rate_limit="10/m",
                      version="1.2")
    async def reg_placed(payload: dict[str, Any], ctx: Any) -> None:
        return None

    spec = registry.get("unit.reg.placed")
    assert spec is not None and spec.is_async
    described = spec.describe()
    assert described["requires"] == ["fpga", "gpu"]
    assert described["resources"] == {"cpu": 2.0, "gpu": 1}
    assert (described["max_concurrency"], described["rate_limit"], described["version"]) == (
        3, "10/m", "1.2")
    assert registry.parse_rate(" 5 / s ") == (5, 1.0)
    for bad in ({"requires": ["GPU"]}, {"requires": ["a b"]}, {"max_concurrency": 0},
                {"rate_limit": "10 per second"}, {"rate_limit": "0/s"}, {"version": "v 2"},
                {"resources": {"cpu": -1}}, {"resources": {"disk": 1}}):
        with pytest.raises(ValidationError):
            bo_queue.handler(f"unit.reg.bad{len(bad)}", **bad)(reg_placed)  # type: ignore[arg-type]


def test_registered_is_a_copy() -> None:
    def reg_copy(payload: dict[str, Any], ctx: Any) -> None:
        return None

    snapshot = registry.registered()
    snapshot["unit.reg.not-really"] = registry.HandlerSpec(name="unit.reg.not-really", fn=reg_copy)
    assert registry.get("unit.reg.not-really") is None
    assert "unit.reg.not-really" not in registry.registered()
