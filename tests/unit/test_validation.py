"""Validation at the edge: a bad submission is rejected before anything is written or sent."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pydantic
import pytest
import redis

import bo_queue
from bo_queue import (
    BOQueue,
    Priority,
    TaskHandle,
    TaskRequest,
    UnknownHandlerError,
    ValidationError,
)
from bo_queue.core.requests import Plan

from .fakes import UNREACHABLE_URL, fake_bq


@bo_queue.handler("unit.echo")
def _echo(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return payload


@bo_queue.handler("unit.special", queue="special")
def _special(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return payload


@pytest.fixture
def plans(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> list[Plan]:
    """Stand in for Core.submit_plans: validation must be over before it is called."""
    seen: list[Plan] = []

    def record(
        batch: list[Plan], durable: bool = False, created_by: str | None = None
    ) -> list[TaskHandle]:
        seen.extend(batch)
        return [TaskHandle(bq, plan.id) for plan in batch]

    monkeypatch.setattr(bq, "submit_plans", record)
    return seen


def test_construction_does_not_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("unit tests do not connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    bq = BOQueue(redis_url=UNREACHABLE_URL, namespace="unit")
    try:
        assert attempts == []
        assert bq.settings.namespace == "unit"
        assert bq.keys.task("x") == "unit:task:x"
    finally:
        bq.close()
    assert attempts == []


def test_plan_of_a_plain_request(bq: BOQueue, plans: list[Plan]) -> None:
    handle = bq.submit("unit.echo", {"x": 1})
    (plan,) = plans
    assert handle.id == plan.id
    assert plan.queue == "default"
    assert plan.due_at is None and plan.expires_at is None and not plan.held
    assert plan.request.priority is Priority.NORMAL
    assert plan.request.payload == {"x": 1}


def test_unknown_handler(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(UnknownHandlerError) as caught:
        bq.submit("unit.nope", {})
    assert caught.value.name == "unit.nope"
    assert isinstance(caught.value, ValidationError)
    assert "unit.echo" in str(caught.value)  # it lists what is known
    assert plans == []


def test_handler_known_only_from_the_worker_directory(
    bq: BOQueue, fake: fakeredis.FakeRedis, plans: list[Plan]
) -> None:
    # A producer never imports the handler's module: a worker publishes it.
    fake.hset(bq.keys.handlers, "remote.only", json.dumps({"queue": "evaluate"}))
    bq.submit("remote.only", {})
    assert plans[0].queue == "evaluate"


def test_unknown_handler_with_redis_down_is_broker_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bq = BOQueue(redis_url=UNREACHABLE_URL, namespace="unit")
    try:
        def down(*args: Any, **kwargs: Any) -> Any:
            raise redis.ConnectionError("refused")

        monkeypatch.setattr(bq.redis, "hgetall", down)
        with pytest.raises(bo_queue.BrokerUnavailableError):
            bq.submit("unit.never-declared", {})
    finally:
        bq.close()


@pytest.mark.parametrize(
    "payload",
    [{"s": {1, 2}}, {"x": float("nan")}, {"x": float("inf")}, {"o": object()}, {"b": b"raw"}],
    ids=["set", "nan", "inf", "object", "bytes"],
)
def test_payload_must_be_json(bq: BOQueue, plans: list[Plan], payload: dict[Any, Any]) -> None:
    with pytest.raises(ValidationError, match="JSON"):
        bq.submit("unit.echo", payload)
    assert plans == []


def test_payload_must_be_a_mapping(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(ValidationError, match="payload"):
        bq.submit("unit.echo", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert plans == []


def test_payload_size_limit(server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    bq = fake_bq(server, max_payload_bytes=100)
    try:
        seen: list[Plan] = []
        monkeypatch.setattr(bq, "submit_plans", lambda batch: seen.extend(batch) or [])
        # '{"x":"' + n * 'a' + '"}' is n + 8 bytes, compact
        bq.check(TaskRequest(handler="unit.echo", payload={"x": "a" * 92}))  # exactly 100
        with pytest.raises(ValidationError, match="101 bytes; the limit is 100"):
            bq.submit("unit.echo", {"x": "a" * 93})
        assert seen == []
    finally:
        bq.close()


@pytest.mark.parametrize("countdown", [-1, -0.001])
def test_negative_countdown(bq: BOQueue, plans: list[Plan], countdown: float) -> None:
    with pytest.raises(ValidationError, match="countdown"):
        bq.submit("unit.echo", {}, countdown=countdown)
    assert plans == []


def test_countdown_and_eta_together(bq: BOQueue, plans: list[Plan]) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=60)
    with pytest.raises(ValidationError, match="countdown or eta"):
        bq.submit("unit.echo", {}, countdown=10, eta=eta)
    assert plans == []


def test_eta_in_the_past(bq: BOQueue, plans: list[Plan]) -> None:
    tolerance = bq.settings.eta_tolerance_s
    with pytest.raises(ValidationError, match="in the past"):
        bq.submit("unit.echo", {}, eta=datetime.now(UTC) - timedelta(seconds=tolerance + 30))
    assert plans == []


@pytest.mark.parametrize("when", [
    {"countdown": 1e308}, {"countdown": float("inf")}, {"expires": 1e308},
    {"eta": datetime(9999, 12, 31, tzinfo=UTC)}, {"countdown": 5, "expires": 11 * 366 * 86400},
])
def test_due_and_expiry_at_most_ten_years_ahead(
    bq: BOQueue, plans: list[Plan], when: dict[str, Any]
) -> None:
    """Far-future times would overflow record TTLs and timestamps (an API caller can send
    1e308): rejected up front."""
    with pytest.raises(ValidationError, match="at most ten years ahead"):
        bq.submit("unit.echo", {}, **when)
    assert plans == []


def test_eta_just_inside_the_tolerance_is_due_now(bq: BOQueue, plans: list[Plan]) -> None:
    tolerance = bq.settings.eta_tolerance_s
    before = time.time()
    bq.submit("unit.echo", {}, eta=datetime.now(UTC) - timedelta(seconds=tolerance / 2))
    (plan,) = plans
    assert plan.due_at is not None
    assert before <= plan.due_at <= time.time()  # clamped to "now", never in the past
    assert not plan.held


def test_naive_eta_is_utc(bq: BOQueue, plans: list[Plan]) -> None:
    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=120)
    bq.submit("unit.echo", {}, eta=naive)
    assert plans[0].due_at == pytest.approx(naive.replace(tzinfo=UTC).timestamp())


@pytest.mark.parametrize("expires", [0, -5, 0.0])
def test_expires_must_be_positive(bq: BOQueue, plans: list[Plan], expires: float) -> None:
    with pytest.raises(ValidationError, match="expires"):
        bq.submit("unit.echo", {}, expires=expires)
    assert plans == []


def test_expires_in_the_past_as_a_datetime(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(ValidationError, match="expires"):
        bq.submit("unit.echo", {}, expires=datetime.now(UTC) - timedelta(seconds=1))
    assert plans == []


@pytest.mark.parametrize(
    "options",
    [
        {"countdown": 60, "expires": 30},
        {"countdown": 60, "expires": 60},
        {"eta": "in 120 s", "expires": "in 100 s"},
    ],
    ids=["countdown-60-expires-30", "expires-at-due", "eta-after-expiry"],
)
def test_expires_before_due(bq: BOQueue, plans: list[Plan], options: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    resolved = {
        key: now + timedelta(seconds=int(value.split()[1])) if isinstance(value, str) else value
        for key, value in options.items()
    }
    with pytest.raises(ValidationError, match="expires must be later"):
        bq.submit("unit.echo", {}, **resolved)
    assert plans == []


def test_expires_after_due_is_accepted(bq: BOQueue, plans: list[Plan]) -> None:
    before = time.time()
    bq.submit("unit.echo", {}, countdown=60, expires=120)
    (plan,) = plans
    assert plan.due_at is not None and plan.expires_at is not None
    assert plan.due_at == pytest.approx(before + 60, abs=2)
    assert plan.expires_at == pytest.approx(before + 120, abs=2)


@pytest.mark.parametrize("priority", ["bogus", 7, -1, True, 2.5])
def test_unknown_priority(bq: BOQueue, plans: list[Plan], priority: Any) -> None:
    with pytest.raises(ValidationError, match="priority"):
        bq.submit("unit.echo", {}, priority=priority)
    assert plans == []


@pytest.mark.parametrize(
    ("given", "expected"), [("urgent", Priority.URGENT), (4, Priority.CRITICAL)]
)
def test_priority_by_name_or_level(
    bq: BOQueue, plans: list[Plan], given: Any, expected: Priority
) -> None:
    bq.submit("unit.echo", {}, priority=given)
    assert plans[0].request.priority is expected


def test_unknown_queue(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(ValidationError, match="unknown queue 'nope'"):
        bq.submit("unit.echo", {}, queue="nope")
    assert plans == []


def test_configured_queue_is_accepted(bq: BOQueue, plans: list[Plan]) -> None:
    bq.submit("unit.echo", {}, queue="evaluate")
    assert plans[0].queue == "evaluate"


def test_queue_declared_by_the_handler_is_accepted(bq: BOQueue, plans: list[Plan]) -> None:
    assert "special" not in bq.settings.queues
    bq.submit("unit.special", {})
    bq.submit("unit.special", {}, queue="special")
    assert [p.queue for p in plans] == ["special", "special"]


def test_a_handlers_queue_is_not_open_to_other_handlers(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(ValidationError, match="unknown queue"):
        bq.submit("unit.echo", {}, queue="special")
    assert plans == []


def test_tags(bq: BOQueue, plans: list[Plan]) -> None:
    bq.submit("unit.echo", {}, tags=["b", "a", "b", "t" * 128])
    assert plans[0].request.tags == ("b", "a", "t" * 128)  # de-duplicated, order kept
    for bad in (["t" * 129], [""]):
        with pytest.raises(ValidationError, match="tags"):
            bq.submit("unit.echo", {}, tags=bad)
    assert len(plans) == 1


def test_long_delay_is_held_and_short_is_not(bq: BOQueue, plans: list[Plan]) -> None:
    hold_over = bq.settings.hold_delays_over_s
    bq.submit("unit.echo", {}, countdown=hold_over + 60)
    bq.submit("unit.echo", {}, countdown=hold_over / 10)
    bq.submit("unit.echo", {}, eta=datetime.now(UTC) + timedelta(seconds=hold_over * 2))
    bq.submit("unit.echo", {}, countdown=0)
    assert [p.held for p in plans] == [True, False, True, False]
    assert plans[3].due_at is None


def test_plan_directly(bq: BOQueue) -> None:
    plan = bq.check(TaskRequest(handler="unit.special", countdown=5, tags=("x",)))
    assert plan.queue == "special"
    assert plan.due_at is not None and not plan.held
    assert plan.request.tags == ("x",)


def test_task_request_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        TaskRequest(handler="unit.echo", prioritty="high")  # type: ignore[call-arg]


# -- submit_many: everything is validated before anything is written ------------------


def test_submit_many_names_the_bad_request(bq: BOQueue, plans: list[Plan]) -> None:
    requests: list[Any] = [
        {"handler": "unit.echo", "payload": {"i": 0}},
        TaskRequest(handler="unit.echo", payload={"i": 1}),
        {"handler": "unit.echo", "countdown": -1},
    ]
    with pytest.raises(ValidationError, match=r"^request 2: ") as caught:
        bq.submit_many(requests)
    assert "countdown" in str(caught.value)
    assert plans == []


def test_submit_many_rejects_a_non_mapping(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(ValidationError, match=r"^request 1: "):
        bq.submit_many([{"handler": "unit.echo"}, "unit.echo"])  # type: ignore[list-item]
    assert plans == []


def test_submit_many_payload_error_names_the_request(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(ValidationError, match=r"^request 1: payload is not JSON"):
        bq.submit_many([{"handler": "unit.echo"}, {"handler": "unit.echo", "payload": {"s": {1}}}])
    assert plans == []


def test_submit_many_valid_batch_is_one_submit(bq: BOQueue, plans: list[Plan]) -> None:
    handles = bq.submit_many(
        [{"handler": "unit.echo", "payload": {"i": i}, "priority": "high"} for i in range(3)]
    )
    assert [p.request.payload for p in plans] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [h.id for h in handles] == [p.id for p in plans]
    assert len({p.id for p in plans}) == 3


def test_submit_many_unknown_handler_keeps_its_name(bq: BOQueue, plans: list[Plan]) -> None:
    with pytest.raises(UnknownHandlerError) as caught:
        bq.submit_many([{"handler": "unit.echo"}, {"handler": "unit.nope"}])
    assert plans == []
    message = str(caught.value)
    assert message.startswith("request 1: "), message
    assert caught.value.name == "unit.nope", f"name is {caught.value.name!r}"


@pytest.mark.parametrize("depends_on", [None, 5, [{}], [["a"]], {"a": 1}])
def test_depends_on_of_the_wrong_type_is_a_validation_error(depends_on: Any) -> None:
    """Not a TypeError from inside a validator (an HTTP client can send anything)."""
    with pytest.raises(pydantic.ValidationError, match="depends_on"):
        TaskRequest(handler="unit.echo", depends_on=depends_on)
