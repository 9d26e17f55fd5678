"""bo_queue.studies.scoring: feasibility, the best trial and the Pareto front, on plain
study models (no Redis, no Ax)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bo_queue.errors import StudyError
from bo_queue.studies import scoring
from bo_queue.studies.models import (
    Objective,
    OutcomeConstraint,
    Range,
    StudySpec,
    Trial,
    TrialStatus,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)
C = TrialStatus.COMPLETED


def spec(*objectives: Objective, constraints: tuple[OutcomeConstraint, ...] = ()) -> StudySpec:
    return StudySpec(name="s", parameters=[Range("x", 0.0, 1.0)],
                     objectives=list(objectives or [Objective("loss")]),
                     outcome_constraints=list(constraints))


def trial(index: int, status: TrialStatus = C, **values: Any) -> Trial:
    return Trial(index=index, params={"x": 0.5}, status=status, values=values or None,
                 created_at=T0)


def indices(trials: list[Trial]) -> list[int]:
    return [t.index for t in trials]


MEM = OutcomeConstraint(metric="mem", op="<=", bound=10.0)
ACC = OutcomeConstraint(metric="acc", op=">=", bound=0.5)


# -- mean -------------------------------------------------------------------------------------


def test_mean_of_a_number_or_a_mean_and_sem() -> None:
    assert scoring.mean(trial(0, loss=2.0), "loss") == 2.0
    assert scoring.mean(trial(0, loss=(1.5, 0.1)), "loss") == 1.5
    assert scoring.mean(trial(0, loss=[0.5, 0.2]), "loss") == 0.5  # as JSON reads it back
    assert scoring.mean(trial(0, loss=3), "loss") == 3.0


def test_mean_of_a_missing_metric_is_none() -> None:
    assert scoring.mean(trial(0), "loss") is None
    assert scoring.mean(trial(0, other=1.0), "loss") is None


# -- feasibility -------------------------------------------------------------------------------


def test_only_completed_trials_with_every_objective_are_feasible() -> None:
    s = spec()
    assert scoring.feasible(s, trial(0, loss=1.0))
    for status in (TrialStatus.RUNNING, TrialStatus.FAILED, TrialStatus.ABANDONED):
        assert not scoring.feasible(s, trial(1, status, loss=1.0)), status
    assert not scoring.feasible(s, trial(2))  # completed without values
    assert not scoring.feasible(s, trial(3, other=1.0))  # without the objective


def test_outcome_constraints_hold_on_their_bounds() -> None:
    s = spec(constraints=(MEM, ACC))
    assert scoring.feasible(s, trial(0, loss=1.0, mem=10.0, acc=0.5))  # on both bounds
    assert scoring.feasible(s, trial(1, loss=1.0, mem=(2.0, 0.5), acc=0.9))
    assert not scoring.feasible(s, trial(2, loss=1.0, mem=10.5, acc=0.9))
    assert not scoring.feasible(s, trial(3, loss=1.0, mem=1.0, acc=0.49))


def test_a_constrained_metric_without_a_value_breaks_its_constraint() -> None:
    s = spec(constraints=(MEM,))
    assert not scoring.feasible(s, trial(0, loss=1.0))
    assert not scoring.holds(MEM, trial(0, loss=1.0))


# -- best --------------------------------------------------------------------------------------


def test_best_minimizes_and_ignores_unfinished_trials() -> None:
    trials = [trial(0, loss=3.0), trial(1, loss=(1.0, 0.2)), trial(2, loss=2.0),
              trial(3, TrialStatus.RUNNING, loss=-5.0), trial(4, TrialStatus.FAILED, loss=-9.0)]
    best = scoring.best(spec(), trials)
    assert best is not None and best.index == 1
    assert scoring.best_value(spec(), trials) == 1.0


def test_best_maximizes() -> None:
    s = spec(Objective("acc", minimize=False))
    trials = [trial(0, acc=0.3), trial(1, acc=(0.9, 0.1)), trial(2, acc=0.5)]
    best = scoring.best(s, trials)
    assert best is not None and best.index == 1
    assert scoring.best_value(s, trials) == 0.9


def test_a_tie_goes_to_the_lowest_index_whatever_the_order() -> None:
    for s in (spec(), spec(Objective("loss", minimize=False))):
        trials = [trial(7, loss=1.0), trial(3, loss=1.0), trial(5, loss=1.0)]
        best = scoring.best(s, trials)
        assert best is not None and best.index == 3


def test_best_skips_infeasible_trials_even_with_the_best_raw_value() -> None:
    s = spec(constraints=(MEM, ACC))
    trials = [
        trial(0, loss=0.1, mem=20.0, acc=0.9),  # the lowest loss, too much memory
        trial(1, loss=0.2, mem=5.0, acc=0.4),  # too inaccurate
        trial(2, loss=0.5, mem=10.0, acc=0.5),
        trial(3, loss=0.7, mem=1.0, acc=0.9),
        trial(4, loss=0.05, acc=0.9),  # no memory reported: not feasible
    ]
    best = scoring.best(s, trials)
    assert best is not None and best.index == 2
    assert scoring.best_value(s, trials) == 0.5


def test_no_feasible_trial_means_no_best() -> None:
    s = spec(constraints=(MEM,))
    assert scoring.best(s, []) is None
    assert scoring.best(s, [trial(0, loss=1.0, mem=99.0), trial(1, TrialStatus.RUNNING)]) is None
    assert scoring.best_value(s, [trial(0, loss=1.0, mem=99.0)]) is None


def test_best_is_for_one_objective() -> None:
    s = spec(Objective("a"), Objective("b"))
    with pytest.raises(StudyError, match="pareto"):
        scoring.best(s, [trial(0, a=1.0, b=1.0)])
    assert scoring.best_value(s, [trial(0, a=1.0, b=1.0)]) is None


# -- Pareto front ------------------------------------------------------------------------------


def test_pareto_front_of_two_objectives() -> None:
    s = spec(Objective("a"), Objective("b", minimize=False))
    trials = [
        trial(0, a=1.0, b=1.0),
        trial(1, a=2.0, b=3.0),
        trial(2, a=2.0, b=2.0),  # dominated by 1
        trial(3, a=0.5, b=0.5),
        trial(4, a=3.0, b=0.5),  # dominated by every other
        trial(5, a=1.0, b=1.0),  # equal to 0: neither dominates the other
        trial(6, TrialStatus.RUNNING, a=0.0, b=9.0),
    ]
    assert indices(scoring.pareto(s, trials)) == [0, 1, 3, 5]


def test_pareto_front_leaves_out_infeasible_trials() -> None:
    s = spec(Objective("a"), Objective("b"), constraints=(MEM,))
    trials = [
        trial(0, a=0.0, b=0.0, mem=11.0),  # would dominate everything, but infeasible
        trial(1, a=1.0, b=2.0, mem=1.0),
        trial(2, a=2.0, b=1.0, mem=10.0),
        trial(3, a=2.0, b=2.0, mem=1.0),  # dominated by 1 and 2
        trial(4, a=1.0, mem=1.0),  # missing an objective
    ]
    assert indices(scoring.pareto(s, trials)) == [1, 2]


def test_pareto_front_with_no_feasible_trial_is_empty() -> None:
    s = spec(Objective("a"), Objective("b"), constraints=(MEM,))
    assert scoring.pareto(s, []) == []
    assert scoring.pareto(s, [trial(0, a=1.0, b=1.0, mem=50.0)]) == []


def test_pareto_front_of_one_objective_is_its_best_values() -> None:
    trials = [trial(0, loss=2.0), trial(1, loss=1.0), trial(2, loss=1.0)]
    assert indices(scoring.pareto(spec(), trials)) == [1, 2]
