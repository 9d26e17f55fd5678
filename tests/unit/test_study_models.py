"""Study models (bo_queue.studies.models): the parameter space, objectives, strategy, values
and the lifecycle. Plain pydantic: nothing here needs Redis, Ax or torch."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from bo_queue.errors import (
    BOQueueError,
    InvalidResultError,
    InvalidTransitionError,
    ValidationError,
)
from bo_queue.studies.models import (
    TRANSITIONS,
    Choice,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    StudySpec,
    StudyStatus,
)

# -- Range -------------------------------------------------------------------------------


def test_range_positional_construction() -> None:
    lr = Range("lr", 1e-4, 1e-1, log=True)
    assert (lr.name, lr.low, lr.high, lr.log, lr.integer) == ("lr", 1e-4, 1e-1, True, False)
    assert lr.kind == "range"


def test_range_keyword_construction_matches_positional() -> None:
    assert Range(name="d", low=2, high=12, integer=True) == Range("d", 2, 12, integer=True)


@pytest.mark.parametrize(
    ("build", "field", "given"),
    [
        (lambda: Range("lr", 1e-4, 1e-1, True), "log", True),  # 4th positional: log?
        (lambda: Range("x", 0, 1, low=0.5), "low", 0.5),  # given twice
        (lambda: Choice("c", [1, 2, 3], False), "ordered", False),
    ],
    ids=["range-extra-positional", "range-positional-and-keyword", "choice-extra-positional"],
)
def test_arguments_are_never_silently_dropped(build: Any, field: str, given: Any) -> None:
    # Either the argument is used, or the call is refused; never a model without it.
    try:
        built = build()
    except (TypeError, ValidationError):
        return
    assert getattr(built, field) == given, f"{field}={given!r} was silently dropped: {built!r}"


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        (("x", 1.0, 1.0), {}, r"low \(1\.0\) must be below high \(1\.0\)"),
        (("x", 2.0, 1.0), {}, r"low \(2\.0\) must be below high \(1\.0\)"),
        (("lr", 0.0, 1.0), {"log": True}, r"log scale needs low > 0"),
        (("lr", -1.0, 1.0), {"log": True}, r"log scale needs low > 0"),
        (("d", 0.5, 10), {"integer": True}, r"integer bounds must be whole numbers"),
        (("d", 0, 10.5), {"integer": True}, r"integer bounds must be whole numbers"),
        (("x", 0.0, math.inf), {}, r"bounds must be finite"),
        (("x", -math.inf, 0.0), {}, r"bounds must be finite"),
        (("x", math.nan, 1.0), {}, r"bounds must be finite"),
    ],
)
def test_range_rejects_bad_bounds(
    args: tuple[Any, ...], kwargs: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem) as info:
        Range(*args, **kwargs)
    assert "invalid Range" in str(info.value)


@pytest.mark.parametrize("name", ["", "1x", "has space", "a-b", "x" * 65])
def test_range_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValidationError, match="not a valid name"):
        Range(name, 0, 1)


def test_range_validation_error_is_a_value_error_and_a_bo_queue_error() -> None:
    with pytest.raises(ValueError) as info:
        Range("x", 1, 0)
    assert isinstance(info.value, BOQueueError)


def test_range_check_in_bounds_returns_a_float() -> None:
    r = Range("x", -1.0, 1.0)
    for value in (-1.0, 0, 0.25, 1):
        checked = r.check(value)
        assert checked == value
        assert type(checked) is float


@pytest.mark.parametrize("value", [-1.0001, 1.0001, 100, -math.inf, math.inf, math.nan])
def test_range_check_out_of_bounds(value: float) -> None:
    with pytest.raises(ValidationError, match=r"x=.* is outside \[-1\.0, 1\.0\]"):
        Range("x", -1.0, 1.0).check(value)


def test_range_check_integer_range_gives_ints() -> None:
    depth = Range("depth", 2, 12, integer=True)
    assert depth.check(5) == 5
    assert type(depth.check(5)) is int
    assert depth.check(7.0) == 7
    assert type(depth.check(7.0)) is int
    assert depth.check(2) == 2 and depth.check(12) == 12


def test_range_check_integer_range_rejects_fractions_and_out_of_bounds() -> None:
    depth = Range("depth", 2, 12, integer=True)
    with pytest.raises(ValidationError, match="expected an integer"):
        depth.check(3.5)
    with pytest.raises(ValidationError, match="outside"):
        depth.check(13)
    with pytest.raises(ValidationError, match="outside"):
        depth.check(1)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_range_check_integer_range_rejects_non_finite_with_validation_error(value: float) -> None:
    # A bad value is bad input at the edge: a bo_queue.ValidationError, like any other.
    with pytest.raises(ValidationError):
        Range("depth", 2, 12, integer=True).check(value)


@pytest.mark.parametrize("value", [True, False, "0.5", None, [0.5]])
def test_range_check_rejects_non_numbers_and_bools(value: Any) -> None:
    with pytest.raises(ValidationError, match="expected a number"):
        Range("x", 0, 1).check(value)
    with pytest.raises(ValidationError, match="expected a number"):
        Range("n", 0, 1, integer=True).check(value)


# -- Choice ------------------------------------------------------------------------------


def test_choice_positional_construction() -> None:
    c = Choice("booster", ["gbtree", "dart"])
    assert (c.name, c.values, c.kind) == ("booster", ["gbtree", "dart"], "choice")


@pytest.mark.parametrize("values", [[], ["only"]])
def test_choice_needs_two_values(values: list[Any]) -> None:
    with pytest.raises(ValidationError, match="at least two values"):
        Choice("c", values)


@pytest.mark.parametrize("values", [[1, 2.0], ["a", 1], [1, True], [0.5, "0.5"]])
def test_choice_rejects_mixed_types(values: list[Any]) -> None:
    with pytest.raises(ValidationError, match="one type"):
        Choice("c", values)


@pytest.mark.parametrize("values", [["a", "a"], [1, 2, 1], [0.5, 0.5]])
def test_choice_rejects_duplicates(values: list[Any]) -> None:
    with pytest.raises(ValidationError, match="distinct"):
        Choice("c", values)


@pytest.mark.parametrize(
    ("values", "kind"),
    [(["a", "b"], "str"), ([1, 2, 3], "int"), ([0.5, 1.5], "float"), ([True, False], "bool")],
)
def test_choice_value_type_keeps_the_type(values: list[Any], kind: str) -> None:
    c = Choice("c", values)
    assert c.value_type == kind
    assert c.values == values
    assert [type(v) for v in c.values] == [type(v) for v in values]


def test_choice_check_accepts_listed_values() -> None:
    assert Choice("c", ["a", "b"]).check("b") == "b"
    assert Choice("c", [1, 2]).check(2) == 2
    assert Choice("c", [True, False]).check(False) is False


@pytest.mark.parametrize(
    ("values", "value"),
    [
        (["a", "b"], "c"),
        ([1, 2], 3),
        ([1, 2], True),
        ([0, 1], False),
        ([1.0, 2.0], 1),
        ([1, 2], 1.0),
        (["a", "b"], None),
    ],
)
def test_choice_check_rejects_values_not_in_the_list(values: list[Any], value: Any) -> None:
    with pytest.raises(ValidationError, match="is not one of"):
        Choice("c", values).check(value)


# -- LinearConstraint ----------------------------------------------------------------------


def test_linear_constraint_expression() -> None:
    c = LinearConstraint(coefficients={"x": 1.0, "y": 2.5}, bound=3.0)
    assert c.expression() == "1.0 * x + 2.5 * y <= 3.0"
    ge = LinearConstraint(coefficients={"x": -1}, op=">=", bound=0)
    assert ge.expression() == "-1.0 * x >= 0.0"


def test_linear_constraint_holds_le() -> None:
    c = LinearConstraint(coefficients={"x": 1.0, "y": 2.0}, bound=1.0)
    assert c.holds({"x": 0.2, "y": 0.3})
    assert c.holds({"x": 0.5, "y": 0.25})  # on the bound
    assert not c.holds({"x": 0.5, "y": 0.26})


def test_linear_constraint_holds_ge() -> None:
    c = LinearConstraint(coefficients={"x": 1.0, "y": 1.0}, op=">=", bound=1.0)
    assert c.holds({"x": 0.5, "y": 0.5})
    assert c.holds({"x": 2, "y": 0})
    assert not c.holds({"x": 0.4, "y": 0.5})


def test_linear_constraint_rejects_an_unknown_op() -> None:
    with pytest.raises(ValidationError, match="op"):
        LinearConstraint(coefficients={"x": 1.0}, op="<", bound=1.0)


# -- StudySpec ----------------------------------------------------------------------------


def space() -> list[Range | Choice]:
    return [
        Range("lr", 1e-4, 1e-1, log=True),
        Range("depth", 2, 12, integer=True),
        Range("x", 0.0, 1.0),
        Range("y", 0.0, 1.0),
        Choice("booster", ["gbtree", "dart"]),
    ]


def spec(**changes: Any) -> StudySpec:
    fields: dict[str, Any] = {
        "name": "tune",
        "parameters": space(),
        "objectives": [Objective("loss")],
        "outcome_constraints": [OutcomeConstraint(metric="mem", op="<=", bound=10.0)],
        "parameter_constraints": [LinearConstraint(coefficients={"x": 1, "y": 1}, bound=1.0)],
    }
    fields.update(changes)
    return StudySpec(**fields)


GOOD = {"lr": 0.01, "depth": 5, "x": 0.25, "y": 0.5, "booster": "dart"}


def test_spec_valid() -> None:
    s = spec()
    assert [p.name for p in s.parameters] == ["lr", "depth", "x", "y", "booster"]
    assert s.metric_names == ["loss", "mem"]
    assert s.strategy == Strategy()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"parameters": [Range("x", 0, 1), Choice("x", ["a", "b"])]}, "duplicate parameter names"),
        ({"parameters": []}, "at least one parameter"),
        ({"objectives": []}, "at least one objective"),
        (
            {"objectives": [Objective("loss"), Objective("loss", minimize=False)]},
            "duplicate objective names",
        ),
        (
            {"outcome_constraints": [OutcomeConstraint(metric="loss", op="<=", bound=1.0)]},
            "outcome constraint cannot be on an objective",
        ),
        ({"objectives": [Objective("x")]}, "metric names must differ from parameter names"),
        (
            {"outcome_constraints": [OutcomeConstraint(metric="depth", op=">=", bound=1.0)]},
            "metric names must differ from parameter names",
        ),
        (
            {
                "parameter_constraints": [
                    LinearConstraint(coefficients={"x": 1, "nope": 1}, bound=1)
                ]
            },
            r"linear-scale range parameters; not one: \['nope'\]",
        ),
        (
            {"parameter_constraints": [LinearConstraint(coefficients={"lr": 1, "x": 1}, bound=1)]},
            r"linear-scale range parameters; not one: \['lr'\]",
        ),
        (
            {"parameter_constraints": [LinearConstraint(coefficients={"booster": 1}, bound=1)]},
            r"linear-scale range parameters; not one: \['booster'\]",
        ),
        (
            {"parameter_constraints": [LinearConstraint(coefficients={}, bound=1)]},
            "linear-scale range parameters; not one: empty",
        ),
    ],
)
def test_spec_rejects_incoherent_studies(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as info:
        spec(**changes)
    assert "invalid StudySpec" in str(info.value)


def test_spec_allows_constraints_over_integer_ranges() -> None:
    s = spec(parameter_constraints=[LinearConstraint(coefficients={"depth": 1, "x": 1}, bound=5)])
    assert s.parameter_constraints[0].coefficients == {"depth": 1.0, "x": 1.0}


def test_check_params_happy_path_returns_typed_values() -> None:
    checked = spec().check_params({**GOOD, "depth": 5.0, "x": 0})
    assert checked == {"lr": 0.01, "depth": 5, "x": 0.0, "y": 0.5, "booster": "dart"}
    assert type(checked["depth"]) is int
    assert type(checked["x"]) is float
    assert type(checked["booster"]) is str


def test_check_params_missing() -> None:
    params = {k: v for k, v in GOOD.items() if k != "depth"}
    with pytest.raises(ValidationError, match=r"missing \['depth'\], unknown \[\]"):
        spec().check_params(params)


def test_check_params_extra() -> None:
    with pytest.raises(ValidationError, match=r"missing \[\], unknown \['z'\]"):
        spec().check_params({**GOOD, "z": 1})


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("lr", 0.5, "outside"),
        ("depth", 13, "outside"),
        ("depth", 3.5, "integer"),
        ("booster", "other", "not one of"),
        ("x", True, "expected a number"),
    ],
)
def test_check_params_out_of_bounds(name: str, value: Any, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        spec().check_params({**GOOD, name: value})


def test_check_params_constraint_broken() -> None:
    with pytest.raises(ValidationError, match=r"break the constraint 1\.0 \* x \+ 1\.0 \* y <= 1"):
        spec().check_params({**GOOD, "x": 0.6, "y": 0.6})


def test_check_values_plain_and_sem() -> None:
    s = spec()
    plain = s.check_values({"loss": 1, "mem": 2.5})
    assert plain == {"loss": 1.0, "mem": 2.5}
    assert type(plain["loss"]) is float
    with_sem = s.check_values({"loss": [0.5, 0.1], "mem": (3, 0)})
    assert with_sem == {"loss": (0.5, 0.1), "mem": (3.0, 0.0)}
    assert isinstance(with_sem["loss"], tuple)
    assert all(type(v) is float for v in with_sem["mem"])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"loss": 1.0}, r"expected values for \['loss', 'mem'\]"),
        ({"mem": 1.0}, r"expected values for \['loss', 'mem'\]"),
        ({"loss": 1.0, "mem": 1.0, "other": 1.0}, "expected values for"),
        ({"loss": math.nan, "mem": 1.0}, "finite"),
        ({"loss": math.inf, "mem": 1.0}, "finite"),
        ({"loss": -math.inf, "mem": 1.0}, "finite"),
        ({"loss": True, "mem": 1.0}, "expected a number"),
        ({"loss": "0.5", "mem": 1.0}, "expected a number"),
        ({"loss": [0.5, -0.1], "mem": 1.0}, "sem must be >= 0"),
        ({"loss": [0.5, math.nan], "mem": 1.0}, "finite"),
        ({"loss": [0.5, 0.1, 0.2], "mem": 1.0}, "expected a number"),
        ({"loss": [True, 0.1], "mem": 1.0}, "expected a number"),
    ],
)
def test_check_values_rejects(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidResultError, match=problem):
        spec().check_values(values)


# -- Strategy -----------------------------------------------------------------------------


def test_strategy_initial_trials_cannot_exceed_max_trials() -> None:
    with pytest.raises(ValidationError, match="initial_trials cannot exceed max_trials"):
        Strategy(initial_trials=10, max_trials=5)
    assert Strategy(initial_trials=5, max_trials=5).max_trials == 5


def test_strategy_failure_budget() -> None:
    assert Strategy(max_trials=17).failure_budget == 17
    assert Strategy(max_trials=17, max_failed_trials=3).failure_budget == 3
    assert Strategy(max_trials=17, max_failed_trials=0).failure_budget == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"max_trials": 0},
        {"initial_trials": 0},
        {"parallelism": 0},
        {"batch_size": 0},
        {"generation_time_limit_s": 0},
        {"max_failed_trials": -1},
        {"method": "slow"},
        {"unknown": 1},
    ],
)
def test_strategy_rejects_bad_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="invalid Strategy"):
        Strategy(**fields)


# -- StudyStatus --------------------------------------------------------------------------

S = StudyStatus
# The spec, written out: the only legal lifecycle moves.
LEGAL: dict[StudyStatus, set[StudyStatus]] = {
    S.CREATED: {S.INITIALIZING, S.FAILED},
    S.INITIALIZING: {S.ACTIVE, S.FAILED},
    S.ACTIVE: {S.PAUSED, S.COMPLETED, S.FAILED},
    S.PAUSED: {S.ACTIVE, S.COMPLETED, S.FAILED},
    S.COMPLETED: set(),
    S.FAILED: set(),
}
PAIRS = list(itertools.product(list(StudyStatus), repeat=2))


def test_all_statuses_are_covered() -> None:
    assert len(PAIRS) == 36
    assert set(LEGAL) == set(StudyStatus) == set(TRANSITIONS)
    assert {s: set(t) for s, t in TRANSITIONS.items()} == LEGAL


@pytest.mark.parametrize(("current", "to"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition(current: StudyStatus, to: StudyStatus) -> None:
    if to in LEGAL[current]:
        current.check_transition(to)  # no exception
    else:
        with pytest.raises(InvalidTransitionError, match=f"from {current} to {to}"):
            current.check_transition(to)


def test_terminal_statuses() -> None:
    assert {s for s in StudyStatus if s.terminal} == {S.COMPLETED, S.FAILED}
    with pytest.raises(InvalidTransitionError, match="it has ended"):
        S.COMPLETED.check_transition(S.ACTIVE)
