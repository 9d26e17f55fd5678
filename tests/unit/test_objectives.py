"""The built-in benchmark objectives (workers.objectives): values, handlers, validation."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from bo_queue import registry
from bo_queue.errors import TaskCancelledError, ValidationError
from workers import objectives
from workers.objectives import (
    BRANIN_MIN,
    BRANIN_MINIMIZERS,
    BRANIN_SPACE,
    HARTMANN6_MIN,
    HARTMANN6_MINIMIZER,
    HARTMANN6_SPACE,
    NORM_BOUND,
    ZDT1_SPACE,
    bench_branin,
    bench_chartmann6,
    bench_hartmann6,
    bench_zdt1,
    branin,
    hartmann6,
)


class StubContext:
    """Just what the objectives use of a TaskContext: cancellation."""

    def __init__(self, cancelled: bool = False) -> None:
        self.cancelled = cancelled
        self.checks = 0

    def raise_if_cancelled(self) -> None:
        self.checks += 1
        if self.cancelled:
            raise TaskCancelledError("stub", "cancelled while running")


def payload(params: dict[str, Any], **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"study_id": "s-1", "trial_index": 3, "params": params}
    if options:
        body["options"] = options
    return body


BRANIN_AT_MIN = {"x1": math.pi, "x2": 2.275}
HARTMANN6_AT_MIN = dict(zip(HARTMANN6_SPACE, HARTMANN6_MINIMIZER, strict=True))


# -- the functions -----------------------------------------------------------------------


@pytest.mark.parametrize("point", [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)])
def test_branin_minimum_at_each_known_minimizer(point: tuple[float, float]) -> None:
    assert branin(*point) == pytest.approx(BRANIN_MIN, abs=1e-4)
    assert point in BRANIN_MINIMIZERS


def test_hartmann6_minimum_at_known_minimizer() -> None:
    point = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
    assert hartmann6(point) == pytest.approx(HARTMANN6_MIN, abs=1e-4)
    assert point == HARTMANN6_MINIMIZER


def test_known_values_elsewhere() -> None:
    # Independent checks of the formulas away from the minima.
    assert branin(0.0, 0.0) == pytest.approx(56.0 - 10.0 / (8 * math.pi), rel=1e-12)
    assert branin(-5.0, 0.0) == pytest.approx(308.12909601160663, rel=1e-12)
    assert hartmann6([0.0] * 6) == pytest.approx(-5.0891e-3, rel=1e-4)
    assert hartmann6([0.5] * 6) == pytest.approx(-0.5053, abs=1e-4)


def test_minima_are_minima_on_a_grid() -> None:
    """No point of a coarse grid beats the stated minimum (the constants are right)."""
    (lo1, hi1), (lo2, hi2) = BRANIN_SPACE["x1"], BRANIN_SPACE["x2"]
    grid = [
        branin(lo1 + (hi1 - lo1) * i / 60, lo2 + (hi2 - lo2) * j / 60)
        for i in range(61)
        for j in range(61)
    ]
    assert min(grid) >= BRANIN_MIN - 1e-6
    corners = [hartmann6([(k >> d) & 1 for d in range(6)]) for k in range(64)]
    assert min(corners) > HARTMANN6_MIN


def test_hartmann6_needs_six_coordinates() -> None:
    with pytest.raises(ValueError, match="6 coordinates"):
        hartmann6([0.5] * 5)


def test_spaces() -> None:
    assert BRANIN_SPACE == {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}
    assert all(bounds == (0.0, 1.0) for bounds in HARTMANN6_SPACE.values())
    assert list(HARTMANN6_SPACE) == ["x1", "x2", "x3", "x4", "x5", "x6"]


# -- the handlers ------------------------------------------------------------------------


def test_handlers_are_registered_on_the_evaluate_queue() -> None:
    for name, fn in (("bench.branin", bench_branin), ("bench.hartmann6", bench_hartmann6),
                     ("bench.zdt1", bench_zdt1), ("bench.chartmann6", bench_chartmann6)):
        spec = registry.get(name)
        assert spec is not None
        assert spec.fn is fn
        assert spec.queue == "evaluate"


def test_branin_handler_returns_the_value() -> None:
    result = bench_branin(payload(BRANIN_AT_MIN), StubContext())  # type: ignore[arg-type]
    assert result.keys() == {"branin"}
    assert isinstance(result["branin"], float)
    assert result["branin"] == pytest.approx(BRANIN_MIN, abs=1e-4)


def test_hartmann6_handler_returns_the_value() -> None:
    result = bench_hartmann6(payload(HARTMANN6_AT_MIN), StubContext())  # type: ignore[arg-type]
    assert result.keys() == {"hartmann6"}
    assert result["hartmann6"] == pytest.approx(HARTMANN6_MIN, abs=1e-4)


@pytest.mark.parametrize("f0", [0.0, 0.25, 1.0])
def test_zdt1_on_its_front_is_one_minus_the_root(f0: float) -> None:
    result = bench_zdt1(payload({"x0": f0, "x1": 0.0, "x2": 0.0}), StubContext())  # type: ignore[arg-type]
    assert result == {"f0": f0, "f1": pytest.approx(1.0 - math.sqrt(f0))}
    off = bench_zdt1(payload({"x0": 0.25, "x1": 1.0, "x2": 1.0}), StubContext())  # type: ignore[arg-type]
    assert off["f1"] == pytest.approx(10.0 * (1.0 - math.sqrt(0.25 / 10.0)))  # g = 10
    assert set(ZDT1_SPACE) == {"x0", "x1", "x2"}


def test_constrained_hartmann6_minimiser_is_feasible() -> None:
    result = bench_chartmann6(payload(HARTMANN6_AT_MIN), StubContext())  # type: ignore[arg-type]
    assert result["hartmann6"] == pytest.approx(HARTMANN6_MIN, abs=1e-4)
    assert result["norm"] == pytest.approx(math.sqrt(sum(x * x for x in HARTMANN6_MINIMIZER)))
    assert result["norm"] <= NORM_BOUND
    corner = bench_chartmann6(payload(dict.fromkeys(HARTMANN6_SPACE, 1.0)), StubContext())  # type: ignore[arg-type]
    assert corner["norm"] == pytest.approx(math.sqrt(6)) and corner["norm"] > NORM_BOUND


def test_integer_params_and_bounds_are_accepted() -> None:
    result = bench_branin(payload({"x1": -5, "x2": 15}), StubContext())  # type: ignore[arg-type]
    assert result["branin"] == pytest.approx(branin(-5.0, 15.0))
    corner = {name: 1 for name in HARTMANN6_SPACE}
    assert bench_hartmann6(payload(corner), StubContext())["hartmann6"] == pytest.approx(  # type: ignore[arg-type]
        hartmann6([1.0] * 6)
    )


def test_options_may_be_absent_empty_or_null() -> None:
    for body in (payload(BRANIN_AT_MIN), {**payload(BRANIN_AT_MIN), "options": {}},
                 {**payload(BRANIN_AT_MIN), "options": None}):
        assert bench_branin(body, StubContext()) == {"branin": branin(math.pi, 2.275)}  # type: ignore[arg-type]


def test_noise_is_seeded_per_trial_and_repeatable() -> None:
    ctx: Any = StubContext()
    exact = branin(math.pi, 2.275)
    first = bench_branin(payload(BRANIN_AT_MIN, noise_sd=0.5, seed=7), ctx)["branin"]
    again = bench_branin(payload(BRANIN_AT_MIN, noise_sd=0.5, seed=7), ctx)["branin"]
    assert first == again != exact  # a redelivered trial gets the same value
    other_seed = bench_branin(payload(BRANIN_AT_MIN, noise_sd=0.5, seed=8), ctx)["branin"]
    other_trial = bench_branin(
        {**payload(BRANIN_AT_MIN, noise_sd=0.5, seed=7), "trial_index": 4}, ctx
    )["branin"]
    assert len({first, other_seed, other_trial}) == 3
    assert bench_branin(payload(BRANIN_AT_MIN, noise_sd=0.0, seed=7), ctx)["branin"] == exact


def test_noise_has_the_requested_spread() -> None:
    ctx: Any = StubContext()
    draws = [
        bench_hartmann6(
            {**payload(HARTMANN6_AT_MIN, noise_sd=0.1), "trial_index": i}, ctx
        )["hartmann6"] - hartmann6(HARTMANN6_MINIMIZER)
        for i in range(400)
    ]
    mean = sum(draws) / len(draws)
    sd = math.sqrt(sum((d - mean) ** 2 for d in draws) / (len(draws) - 1))
    assert abs(mean) < 0.02
    assert 0.08 < sd < 0.12


def test_sleep_option_sleeps_and_checks_for_cancellation() -> None:
    ctx = StubContext()
    started = time.monotonic()
    result = bench_branin(payload(BRANIN_AT_MIN, sleep_s=0.15), ctx)  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.15
    assert result["branin"] == pytest.approx(BRANIN_MIN, abs=1e-4)
    assert ctx.checks >= 1


def test_a_cancelled_sleep_stops_early() -> None:
    ctx = StubContext(cancelled=True)
    started = time.monotonic()
    with pytest.raises(TaskCancelledError):
        bench_branin(payload(BRANIN_AT_MIN, sleep_s=30), ctx)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2 * objectives._SLEEP_SLICE_S + 0.5


# -- bad payloads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"x1": 1.0}, r"params must be exactly x1, x2 \(missing x2\)"),
        ({"x1": 1.0, "x2": 2.0, "x3": 0.0}, r"\(unexpected x3\)"),
        ({"x2": 2.0, "y": 0.0}, r"missing x1; unexpected y"),
        ({}, r"missing x1, x2"),
        ({"x1": "1.0", "x2": 2.0}, r"param x1 must be a number"),
        ({"x1": True, "x2": 2.0}, r"param x1 must be a number"),
        ({"x1": None, "x2": 2.0}, r"param x1 must be a number"),
        ({"x1": math.nan, "x2": 2.0}, r"param x1 must be finite"),
        ({"x1": 11.0, "x2": 2.0}, r"x1=11.0 is outside \[-5, 10\]"),
        ({"x1": 0.0, "x2": -0.5}, r"x2=-0.5 is outside \[0, 15\]"),
    ],
)
def test_bad_branin_params(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        bench_branin(payload(params), StubContext())  # type: ignore[arg-type]
    assert str(info.value).startswith("bench.branin: ")


def test_bad_hartmann6_params() -> None:
    five = {f"x{i}": 0.5 for i in range(1, 6)}
    with pytest.raises(ValidationError, match=r"bench.hartmann6: .*\(missing x6\)"):
        bench_hartmann6(payload(five), StubContext())  # type: ignore[arg-type]
    seven = {f"x{i}": 0.5 for i in range(1, 8)}
    with pytest.raises(ValidationError, match=r"\(unexpected x7\)"):
        bench_hartmann6(payload(seven), StubContext())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"x3=1.5 is outside \[0, 1\]"):
        bench_hartmann6(payload({**five, "x6": 0.5, "x3": 1.5}), StubContext())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"study_id": "s", "trial_index": 0}, r"payload needs 'params'"),
        ({"params": [1.0, 2.0]}, r"payload needs 'params'"),
        ({"params": {"x1": 0.0, "x2": 0.0}, "options": []}, r"'options' must be an object"),
        ({"params": {"x1": 0.0, "x2": 0.0}, "options": {"sleep": 1}}, r"unknown option\(s\) sleep"),
        ({"params": {"x1": 0.0, "x2": 0.0}, "options": {"sleep_s": -1}}, r"sleep_s must be >= 0"),
        ({"params": {"x1": 0.0, "x2": 0.0}, "options": {"noise_sd": "x"}}, r"noise_sd must be"),
        ({"params": {"x1": 0.0, "x2": 0.0}, "options": {"seed": 1.5}}, r"seed must be an integer"),
    ],
)
def test_bad_payloads(body: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        bench_branin(body, StubContext())  # type: ignore[arg-type]
