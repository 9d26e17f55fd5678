"""How a study's trials score: the one home of "feasible", "best" and "Pareto front".

`bq.studies.best()` and `pareto()`, the study dashboard, `bq.monitor.metrics()` and the
Prometheus gauges all ask these functions, so they cannot disagree about which trial is
best. Pure functions on the study models: no Redis, no Ax.

- A trial's value of a metric is its mean (a reported value is a mean or (mean, sem)); a
  trial without a finite value of a metric has none (`mean` is None).
- A trial is feasible when it COMPLETED with a value for every objective and every
  outcome constraint holds (a bound itself is inside; a constrained metric the trial has
  no value of breaks the constraint).
- The best trial of a single-objective study is the feasible one with the lowest value
  (highest when maximizing); a tie goes to the lowest trial index.
- The Pareto front is the feasible trials that no other feasible trial dominates (at
  least as good on every objective, and not equal on all of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bo_queue.errors import StudyError
from bo_queue.studies.models import OutcomeConstraint, StudySpec, Trial, TrialStatus


def mean(trial: Trial, metric: str) -> float | None:
    """The trial's observed mean of `metric`; None when it has no finite value of it."""
    value = (trial.values or {}).get(metric)
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def holds(constraint: OutcomeConstraint, trial: Trial) -> bool:
    """Whether the trial's value of the constrained metric is within the bound."""
    value = mean(trial, constraint.metric)
    if value is None:
        return False
    return value <= constraint.bound if constraint.op == "<=" else value >= constraint.bound


def feasible(spec: StudySpec, trial: Trial) -> bool:
    """COMPLETED, with a value for every objective, and inside every outcome constraint."""
    if trial.status is not TrialStatus.COMPLETED or not trial.values:
        return False
    if any(mean(trial, o.name) is None for o in spec.objectives):
        return False
    return all(holds(c, trial) for c in spec.outcome_constraints)


def feasible_trials(spec: StudySpec, trials: Iterable[Trial]) -> list[Trial]:
    """The feasible trials, in the order given."""
    return [t for t in trials if feasible(spec, t)]


def best(spec: StudySpec, trials: Iterable[Trial]) -> Trial | None:
    """The best feasible trial of a single-objective study, or None if none is feasible.
    StudyError for several objectives (they have a front: `pareto`)."""
    if len(spec.objectives) != 1:
        raise StudyError("best() is for one objective; use pareto() for several")
    objective = spec.objectives[0]
    sign = 1.0 if objective.minimize else -1.0
    scored = [(sign * _value(t, objective.name), t.index, t) for t in feasible_trials(spec, trials)]
    if not scored:
        return None
    return min(scored, key=lambda item: (item[0], item[1]))[2]


def best_value(spec: StudySpec, trials: Iterable[Trial]) -> float | None:
    """The objective's value of the best trial; None if there is none, or the study has
    several objectives."""
    if len(spec.objectives) != 1:
        return None
    trial = best(spec, trials)
    return None if trial is None else _value(trial, spec.objectives[0].name)


def pareto(spec: StudySpec, trials: Iterable[Trial]) -> list[Trial]:
    """The feasible trials no other feasible trial dominates, in the order given."""
    signs = {o.name: 1.0 if o.minimize else -1.0 for o in spec.objectives}
    done = feasible_trials(spec, trials)
    scores = [[s * _value(t, name) for name, s in signs.items()] for t in done]

    def dominated(a: list[float]) -> bool:
        return any(
            all(x <= y for x, y in zip(b, a, strict=True)) and b != a for b in scores
        )

    return [t for t, score in zip(done, scores, strict=True) if not dominated(score)]


def _value(trial: Trial, metric: str) -> float:
    """The mean of a metric a feasible trial has a value of."""
    value = mean(trial, metric)
    assert value is not None, (trial.index, metric)
    return value
