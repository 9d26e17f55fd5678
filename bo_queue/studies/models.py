"""Study and trial models: the parameter space, objectives, strategy, lifecycle.

Everything here is plain pydantic (no Ax), so producers can build and validate studies
without importing torch; bo_queue.studies.engine turns these into an Ax Client on a worker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticSerializationError

from bo_queue.errors import InvalidResultError, InvalidTransitionError, ValidationError, shown
from bo_queue.studies import _reserved
from bo_queue.validation import check_json, encodable, problems

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# Ax refuses a range narrower than this (100 * ax.core.parameter.EPS), log scale or not.
MIN_RANGE_WIDTH = 1.5e-5
# Seeds Ax (and numpy under it) accept.
MAX_SEED = 2**32 - 1

Value = int | float | str | bool


# A required argument left out: dropped before validation, so pydantic reports it as a
# missing field (a ValidationError) rather than Python as a TypeError. Validating nested
# data (a StudySpec from JSON) calls these __init__s with whatever keys the data has.
_MISSING: Any = object()


class _Frozen(BaseModel):
    # No NaN or infinity anywhere in a spec: JSON has neither (pydantic would store null,
    # and the study could not be read back), and Ax cannot use them.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def __init__(self, /, **data: Any) -> None:
        data = {k: v for k, v in data.items() if v is not _MISSING}  # pydantic: "required"
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid {type(self).__name__}: {problems(exc)}") from None


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid name (letters, digits, '_')")
    return name


def _expression_name_problem(name: str) -> str | None:
    """Why Ax could not use `name` in an expression (a metric, a constrained parameter)."""
    if name in _reserved.SYMPY or name in _reserved.PYTHON:
        return f"{name!r} is a reserved name in Ax's expression parser (sympy, Python)"
    if any(marker in name for marker in _reserved.AX_PLACEHOLDERS):
        return f"{name!r} contains a placeholder Ax puts in names"
    return None


class Range(_Frozen):
    """A float or integer range, optionally on a log scale: Range("lr", 1e-4, 1e-1, log=True)."""

    kind: Literal["range"] = "range"
    name: str
    low: float = Field(allow_inf_nan=True)  # _bounds says "bounds must be finite"
    high: float = Field(allow_inf_nan=True)
    log: bool = False
    integer: bool = False

    def __init__(
        self,
        /,
        name: str = _MISSING,
        low: float = _MISSING,
        high: float = _MISSING,
        *,
        log: bool = False,
        integer: bool = False,
        **fields: Any,  # as stored ("kind"); unknown ones are rejected
    ) -> None:
        super().__init__(name=name, low=low, high=high, log=log, integer=integer, **fields)

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("bounds must be finite")
        if self.low >= self.high:
            raise ValueError(f"{self.name}: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"{self.name}: a log scale needs low > 0, got {self.low}")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"{self.name}: integer bounds must be whole numbers")
        return self

    def check(self, value: Any) -> Value:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"{self.name}: expected a number, got {shown(value)}")
        if not (_fits_float(value) and math.isfinite(value) and self.low <= value <= self.high):
            raise ValidationError(
                f"{self.name}={shown(value)} is outside [{self.low}, {self.high}]"
            )
        if self.integer and value != int(value):
            raise ValidationError(f"{self.name}: expected an integer, got {shown(value)}")
        return int(value) if self.integer else float(value)


class Choice(_Frozen):
    """A choice among values of one type: Choice("booster", ["gbtree", "dart"])."""

    kind: Literal["choice"] = "choice"
    name: str
    values: list[Value]
    ordered: bool | None = None  # None: ordered for numbers, not for strings and bools

    def __init__(
        self, /, name: str = _MISSING, values: Sequence[Value] = _MISSING, *,
        ordered: bool | None = None, **fields: Any,
    ) -> None:
        super().__init__(name=name, values=values, ordered=ordered, **fields)

    _name = field_validator("name")(_check_name)

    @field_validator("values", mode="before")
    @classmethod
    def _keep_types(cls, values: Any) -> Any:
        return (
            list(values) if isinstance(values, Sequence) and not isinstance(values, str) else values
        )

    @model_validator(mode="after")
    def _values(self) -> Choice:
        if len(self.values) < 2:
            raise ValueError(f"{self.name}: a choice needs at least two values")
        if len({type(v) for v in self.values}) > 1:
            raise ValueError(f"{self.name}: values must all have one type")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"{self.name}: values must be distinct")
        return self

    @property
    def value_type(self) -> Literal["int", "float", "str", "bool"]:
        kind = type(self.values[0])
        return {bool: "bool", int: "int", float: "float"}.get(kind, "str")  # type: ignore[return-value]

    def check(self, value: Any) -> Value:
        if value not in self.values or type(value) is not type(self.values[0]):
            raise ValidationError(f"{self.name}={shown(value)} is not one of {self.values}")
        checked: Value = value
        return checked


Parameter = Annotated[Range | Choice, Field(discriminator="kind")]


class LinearConstraint(_Frozen):
    """sum(coefficient * parameter) <= bound (or >=), over numeric range parameters."""

    coefficients: dict[str, float]
    op: Literal["<=", ">="] = "<="
    bound: float

    def expression(self) -> str:
        terms = " + ".join(f"{c} * {name}" for name, c in self.coefficients.items())
        return f"{terms} {self.op} {self.bound}"

    def holds(self, params: Mapping[str, Any]) -> bool:
        total = sum(c * float(params[name]) for name, c in self.coefficients.items())
        return total <= self.bound + 1e-9 if self.op == "<=" else total >= self.bound - 1e-9


class Objective(_Frozen):
    name: str
    minimize: bool = True

    _name = field_validator("name")(_check_name)

    def __init__(self, /, name: str = _MISSING, minimize: bool = True, **fields: Any) -> None:
        super().__init__(name=name, minimize=minimize, **fields)


class OutcomeConstraint(_Frozen):
    """A metric the evaluator reports that must stay above or below a bound."""

    metric: str
    op: Literal["<=", ">="]
    bound: float

    _name = field_validator("metric")(_check_name)


class EarlyStopping(_Frozen):
    """Stop a trial from its intermediate values (reported with report_intermediate) when
    a rule says it is doing badly. The rules are Ax's (PercentileEarlyStoppingStrategy,
    ThresholdEarlyStoppingStrategy), decided in Redis when each report arrives:

    - percentile: worse than the `percentile`-th percentile of the values the trials
      (this one too) reported at the same step, once `min_curves` trials reported that
      far; 50 is the median rule. None turns it off.
    - threshold: worse than `threshold` (above it when minimizing). None turns it off.

    No decision before step `min_progression`. `metric` is the objective the rules watch
    (default: the study's first)."""

    percentile: float | None = Field(default=50.0, ge=0.0, le=100.0)
    min_progression: int = Field(default=0, ge=0)
    min_curves: int = Field(default=5, ge=1)
    threshold: float | None = None
    metric: str | None = None

    def __init__(
        self, /, percentile: float | None = 50.0, min_progression: int = 0,
        min_curves: int = 5, **fields: Any,
    ) -> None:
        super().__init__(
            percentile=percentile, min_progression=min_progression, min_curves=min_curves,
            **fields,
        )

    @model_validator(mode="after")
    def _a_rule(self) -> EarlyStopping:
        if self.percentile is None and self.threshold is None:
            raise ValueError("early stopping needs a rule: a percentile, a threshold or both")
        return self


class Strategy(_Frozen):
    initial_trials: int = Field(default=5, ge=1)  # quasi-random (Sobol) trials before the model
    max_trials: int = Field(default=30, ge=1)  # completed trials at which the study completes
    batch_size: int | None = Field(default=None, ge=1)  # trials per Ax call (None: all at once)
    parallelism: int = Field(default=1, ge=1)  # trials running at once in a closed loop
    seed: int | None = None
    method: Literal["fast", "quality", "random_search"] = "fast"  # Ax's generation strategy
    generation_time_limit_s: float = Field(default=120.0, gt=0)  # past it: Sobol for that batch
    trial_lease_s: float = Field(default=3600.0, gt=0)  # a RUNNING trial older than this is failed
    max_failed_trials: int | None = Field(default=None, ge=0)  # default: max_trials
    early_stopping: EarlyStopping | None = None  # rules on intermediate values

    @model_validator(mode="after")
    def _fits(self) -> Strategy:
        if self.initial_trials > self.max_trials:
            raise ValueError("initial_trials cannot exceed max_trials")
        return self

    @property
    def failure_budget(self) -> int:
        return self.max_trials if self.max_failed_trials is None else self.max_failed_trials


class StudyStatus(StrEnum):
    CREATED = "CREATED"
    INITIALIZING = "INITIALIZING"
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (StudyStatus.COMPLETED, StudyStatus.FAILED)

    def check_transition(self, to: StudyStatus) -> None:
        if to not in TRANSITIONS[self]:
            allowed = ", ".join(sorted(TRANSITIONS[self])) or "none (it has ended)"
            raise InvalidTransitionError(
                f"a study cannot go from {self} to {to}; from {self}: {allowed}"
            )


TRANSITIONS: dict[StudyStatus, frozenset[StudyStatus]] = {
    StudyStatus.CREATED: frozenset({StudyStatus.INITIALIZING, StudyStatus.FAILED}),
    StudyStatus.INITIALIZING: frozenset({StudyStatus.ACTIVE, StudyStatus.FAILED}),
    StudyStatus.ACTIVE: frozenset({StudyStatus.PAUSED, StudyStatus.COMPLETED, StudyStatus.FAILED}),
    StudyStatus.PAUSED: frozenset({StudyStatus.ACTIVE, StudyStatus.COMPLETED, StudyStatus.FAILED}),
    StudyStatus.COMPLETED: frozenset(),
    StudyStatus.FAILED: frozenset(),
}


class TrialStatus(StrEnum):
    RUNNING = "RUNNING"  # handed out (suggested, or an evaluation in flight)
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # the evaluation failed, or its lease ran out
    ABANDONED = "ABANDONED"  # given up on by the producer
    EARLY_STOPPED = "EARLY_STOPPED"  # an early-stopping rule stopped it; values: its last

    @property
    def finished(self) -> bool:
        """Ended with data: what counts towards max_trials."""
        return self in (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED)


Outcome = float | tuple[float, float]  # a mean, or (mean, sem)
Curve = list[tuple[int, dict[str, Outcome]]]  # a trial's intermediate values, oldest first


def outcomes(values: Mapping[str, Any]) -> dict[str, Outcome]:
    """Values as JSON gives them back ([mean, sem] lists) as Outcomes."""
    return {k: (v[0], v[1]) if isinstance(v, list) else v for k, v in values.items()}


def mean(value: Outcome) -> float:
    return value[0] if isinstance(value, tuple) else value


WARM_START = "warm-start"  # the generator of a trial attached from another study


class Trial(BaseModel):
    """One evaluation of a study: its parameters, status, reported values, and when and
    how it was generated and evaluated."""

    model_config = ConfigDict(frozen=True)

    index: int
    params: dict[str, Value]
    status: TrialStatus = TrialStatus.RUNNING
    values: dict[str, Outcome] | None = None
    batch: int = 0  # the step that generated it
    # "sobol", "botorch", "sobol-fallback" (time box), "manual", "warm-start" (another
    # study's result, attached before the first generation; not counted to max_trials)
    generator: str = ""
    task_id: str | None = None  # the evaluation task, in a closed loop
    worker: str | None = None
    created_at: datetime
    leased_until: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    reported_at: datetime | None = None  # when its result or failure was reported
    result_metadata: dict[str, Any] | None = None  # report(metadata=): the reporter's JSON


class StudySpec(_Frozen):
    """What a study is: its space, goals and strategy. Validated as a whole."""

    name: str = Field(min_length=1, max_length=200)
    parameters: list[Parameter]
    objectives: list[Objective]
    parameter_constraints: list[LinearConstraint] = Field(default_factory=list)
    outcome_constraints: list[OutcomeConstraint] = Field(default_factory=list)
    strategy: Strategy = Field(default_factory=Strategy)
    evaluator: str | None = Field(default=None, min_length=1, max_length=200)  # a handler
    evaluator_options: dict[str, Any] = Field(default_factory=dict)  # passed as "options"

    @model_validator(mode="after")
    def _coherent(self) -> StudySpec:
        names = [p.name for p in self.parameters]
        if not names:
            raise ValueError("a study needs at least one parameter")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names: {_dupes(names)}")
        metrics = [o.name for o in self.objectives]
        if not metrics:
            raise ValueError("a study needs at least one objective")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"duplicate objective names: {_dupes(metrics)}")
        constrained = [c.metric for c in self.outcome_constraints]
        if set(constrained) & set(metrics):
            raise ValueError("an outcome constraint cannot be on an objective")
        if set(metrics + constrained) & set(names):
            raise ValueError("metric names must differ from parameter names")
        stopping = self.strategy.early_stopping
        if stopping is not None and stopping.metric is not None and stopping.metric not in metrics:
            raise ValueError(
                f"early_stopping.metric must be an objective, one of {metrics}, "
                f"not {stopping.metric!r}"
            )
        ranges = {p.name for p in self.parameters if isinstance(p, Range) and not p.log}
        for constraint in self.parameter_constraints:
            unknown = set(constraint.coefficients) - ranges
            if unknown or not constraint.coefficients:
                raise ValueError(
                    f"parameter constraints need linear-scale range parameters; "
                    f"not one: {sorted(unknown) or 'empty'}"
                )
        return self

    def check_runnable(self) -> StudySpec:
        """What Ax will take, checked when a study is created or re-specified (not when a
        stored study is read back, which may predate a check): ValidationError otherwise.
        A study that broke one of these would only fail at its first step, on a worker."""

        problems = []
        for p in self.parameters:
            if isinstance(p, Range) and not math.isfinite(p.high - p.low):
                problems.append(f"{p.name}: high - low must be finite")
            elif isinstance(p, Range) and p.high - p.low < MIN_RANGE_WIDTH:
                problems.append(
                    f"{p.name}: high - low must be at least {MIN_RANGE_WIDTH:g} (Ax's limit); "
                    f"scale the parameter"
                )
        # Ax parses the objective, outcome constraints and parameter constraints as
        # expressions: the names in them must be plain symbols to sympy.
        constrained = [n for c in self.parameter_constraints for n in c.coefficients]
        for name in dict.fromkeys(self.metric_names + constrained):
            problem = _expression_name_problem(name)
            if problem:
                problems.append(problem)
        seed = self.strategy.seed
        if seed is not None and not 0 <= seed <= MAX_SEED:
            problems.append(
                f"strategy.seed must be between 0 and {MAX_SEED}, got {shown(seed)}"
            )
        if problems:
            raise ValidationError(f"invalid StudySpec: {'; '.join(problems)}")
        check_json(self.evaluator_options, "evaluator_options", limit=1 << 20)
        if not all_text_encodable(self.evaluator_options):
            # pydantic's JSON turns a lone surrogate in a key into U+FFFD without a word
            raise ValidationError("invalid StudySpec: evaluator_options has text that is not "
                                  "UTF-8 (a lone surrogate)")
        # It is stored as JSON: what is read back must be this spec (no lone surrogates
        # pydantic cannot encode, nothing that comes back as something else).
        try:
            again = StudySpec.model_validate_json(self.model_dump_json())
        except (PydanticSerializationError, pydantic.ValidationError, ValidationError) as exc:
            raise ValidationError(f"invalid StudySpec: cannot be stored as JSON: {exc}") from None
        if again.model_dump(mode="json") != self.model_dump(mode="json"):
            raise ValidationError("invalid StudySpec: it does not read back as it was given")
        return self

    @property
    def stopping_objective(self) -> Objective:
        """The objective the early-stopping rules watch."""
        stopping = self.strategy.early_stopping
        wanted = stopping.metric if stopping is not None else None
        return next((o for o in self.objectives if o.name == wanted), self.objectives[0])

    @property
    def metric_names(self) -> list[str]:
        return [o.name for o in self.objectives] + [c.metric for c in self.outcome_constraints]

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Value]:
        """Params inside the space (each parameter once, in bounds, constraints hold)."""
        if not isinstance(params, Mapping):
            raise ValidationError(f"params must be a mapping, not {type(params).__name__}")
        space = {p.name: p for p in self.parameters}
        missing, extra = set(space) - set(params), set(params) - set(space)
        if missing or extra:
            raise ValidationError(
                f"params must name exactly the study's parameters; "
                f"missing {sorted(missing)}, unknown {_listing(extra)}"
            )
        checked = {name: space[name].check(value) for name, value in params.items()}
        for constraint in self.parameter_constraints:
            if not constraint.holds(checked):
                raise ValidationError(f"params break the constraint {constraint.expression()}")
        return checked

    def check_values(self, values: Mapping[str, Any]) -> dict[str, Outcome]:
        """A result: every objective and constrained metric, each finite (or [mean, sem])."""
        if not isinstance(values, Mapping):
            raise InvalidResultError(
                f"values must be a mapping of metric to number, not {type(values).__name__}"
            )
        expected = set(self.metric_names)
        if set(values) != expected:
            raise InvalidResultError(
                f"expected values for {sorted(expected)}, "
                f"got {_listing(values)}"
            )
        return {name: _outcome(name, value) for name, value in values.items()}


def _outcome(name: str, value: Any) -> Outcome:
    if isinstance(value, list | tuple) and len(value) == 2:
        mean, sem = (_finite(name, v) for v in value)
        if sem < 0:
            raise InvalidResultError(f"{name}: the sem must be >= 0, got {sem}")
        return (mean, sem)
    return _finite(name, value)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResultError(
            f"{name}: expected a number or [mean, sem], got {shown(value)}"
        )
    if not (_fits_float(value) and math.isfinite(value)):
        raise InvalidResultError(f"{name}: values must be finite, got {shown(value)}")
    return float(value)


def all_text_encodable(value: Any) -> bool:

    stack = [value]
    while stack:  # iteratively: no depth is too deep
        item = stack.pop()
        if isinstance(item, str) and not encodable(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _listing(keys: Any) -> str:
    """Keys of any types (a caller's dict may mix them) as a sorted list, for a message."""
    listed = sorted(shown(key) for key in keys)
    return f"[{', '.join(listed[:20])}{', ...' if len(listed) > 20 else ''}]"


def _fits_float(value: int | float) -> bool:
    """False for an int too large for a float (10**400), which math and float() refuse."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _dupes(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


class Study(BaseModel):
    """A study as stored: its spec, lifecycle status and counts."""

    model_config = ConfigDict(frozen=True)

    id: str
    spec: StudySpec
    status: StudyStatus = StudyStatus.CREATED
    message: str = ""  # why it failed, completed early, or fell back to Sobol
    created_at: datetime
    updated_at: datetime
    completed_trials: int = 0
    failed_trials: int = 0
    running_trials: int = 0
    early_stopped_trials: int = 0  # stopped by an early-stopping rule (count to max_trials)
    iteration: int = 0  # steps that changed the model
    mode: Literal["ask_tell", "closed_loop"] = "ask_tell"  # closed_loop once run() is called
    description: str = ""  # what the study is for, in the owner's words
    metadata: dict[str, Any] = Field(default_factory=dict)  # the owner's JSON (tags, links)
    warm_start_from: list[str] = Field(default_factory=list)  # studies whose results it starts from

    @property
    def name(self) -> str:
        return self.spec.name
