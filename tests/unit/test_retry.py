"""RetryPolicy: which errors retry, and the capped exponential backoff with full jitter."""

from __future__ import annotations

import json
import random

import pydantic
import pytest

from bo_queue import RetryPolicy, ValidationError
from bo_queue.retry import NO_RETRY


def test_delay_without_jitter_doubles_then_caps() -> None:
    policy = RetryPolicy(backoff=1.5, backoff_max=20.0, jitter=False)
    assert [policy.delay_s(n) for n in range(6)] == [1.5, 3.0, 6.0, 12.0, 20.0, 20.0]
    assert policy.delay_s(60) == 20.0  # a huge retry count stays at the cap


def test_zero_backoff_never_waits() -> None:
    policy = RetryPolicy(backoff=0.0, backoff_max=0.0, jitter=False)
    assert {policy.delay_s(n) for n in range(5)} == {0.0}


def test_jitter_stays_within_zero_and_the_ceiling() -> None:
    policy = RetryPolicy(backoff=1.0, backoff_max=10.0, jitter=True)
    random.seed(1234)
    for retry, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        draws = [policy.delay_s(retry) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws), (retry, max(draws))
        # Full jitter: the draws spread over the range rather than sitting at one value.
        assert max(draws) - min(draws) > ceiling / 2


def test_jitter_draws_uniformly_up_to_the_capped_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float]] = []

    def fake_uniform(a: float, b: float) -> float:
        seen.append((a, b))
        return b / 3

    monkeypatch.setattr(random, "uniform", fake_uniform)
    policy = RetryPolicy(backoff=2.0, backoff_max=5.0, jitter=True)
    assert policy.delay_s(0) == pytest.approx(2.0 / 3)
    assert policy.delay_s(5) == pytest.approx(5.0 / 3)
    assert seen == [(0, 2.0), (0, 5.0)]


def test_jitter_is_deterministic_under_a_seed() -> None:
    policy = RetryPolicy(backoff=1.0, backoff_max=100.0, jitter=True)
    random.seed(7)
    first = [policy.delay_s(n) for n in range(6)]
    random.seed(7)
    assert [policy.delay_s(n) for n in range(6)] == first


def test_retries_honours_on() -> None:
    policy = RetryPolicy(on=(ConnectionError, KeyError))
    assert policy.retries(ConnectionError("down"))
    assert policy.retries(ConnectionRefusedError("refused"))  # a subclass
    assert policy.retries(KeyError("k"))
    assert not policy.retries(ValueError("bad"))
    assert not policy.retries(RuntimeError("no"))


def test_default_retries_exceptions_but_not_base_exceptions() -> None:
    policy = RetryPolicy()
    assert policy.retries(ValueError("x"))
    assert not policy.retries(KeyboardInterrupt())
    assert not policy.retries(SystemExit(1))


def test_defaults_and_no_retry() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.backoff, policy.backoff_max, policy.jitter) == (
        3, 1.0, 600.0, True
    )
    assert NO_RETRY.max_retries == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backoff": 10.0, "backoff_max": 5.0},
        {"on": (42,)},
        {"on": ("NoSuchBuiltinError",)},
        {"on": ("not a name",)},
        {"on": ("int",)},
        {"on": (ValueError, int)},
        {"max_retries": -1},
        {"max_retries": 10_001},
        {"backoff": -1.0},
    ],
    ids=repr,
)
def test_invalid_policies_raise_our_validation_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="invalid RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        policy.max_retries = 9  # type: ignore[misc]


def test_describe_is_json_and_names_the_exception_types() -> None:
    policy = RetryPolicy(max_retries=5, backoff=1.0, backoff_max=60.0, on=(ConnectionError,))
    described = json.loads(json.dumps(policy.describe()))
    assert described == {
        "max_retries": 5,
        "backoff": 1.0,
        "backoff_max": 60.0,
        "jitter": True,
        "on": ["builtins.ConnectionError"],
    }


def test_types_by_name_match_the_class_or_a_base() -> None:
    policy = RetryPolicy(on=("ConnectionError", "tests.unit.test_retry.Transient"))
    assert policy.on[0] is ConnectionError  # a builtin's name is the class itself
    assert policy.retries(ConnectionRefusedError("refused"))
    assert policy.retries(Transient("x")) and policy.retries(MoreTransient("y"))
    assert not policy.retries(ValueError("bad"))


def test_a_described_policy_is_the_same_policy_by_name() -> None:
    policy = RetryPolicy(max_retries=2, backoff=0.5, jitter=False, on=(Transient, KeyError))
    again = RetryPolicy(**json.loads(json.dumps(policy.describe())))
    assert again.describe() == policy.describe()
    assert again.retries(MoreTransient("y")) and again.retries(KeyError("k"))
    assert not again.retries(ValueError("v"))


class Transient(Exception):
    pass


class MoreTransient(Transient):
    pass
