"""StudyManager (`bq.studies`) on fakeredis, with no workers: only what needs no study step
runs for real; `_stepping` (which submits a step task) is replaced by a recorder."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

from bo_queue import BOQueue
from bo_queue.errors import (
    InvalidResultError,
    InvalidTransitionError,
    StudyError,
    StudyNotFoundError,
    UnknownHandlerError,
    ValidationError,
)
from bo_queue.studies.manager import TELL_AFTER_S, StudyManager, StudyTimeoutError
from bo_queue.studies.models import (
    Choice,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    Study,
    StudyStatus,
    Trial,
    TrialStatus,
)

S = StudyStatus
T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def steps() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def studies(
    bq: BOQueue,
    server: fakeredis.FakeServer,
    steps: list[tuple[str, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> StudyManager:
    manager = bq.studies
    # the unit conftest fakes bq.redis; the store's bytes client must be fake too
    manager.store.raw = fakeredis.FakeRedis(server=server)
    assert isinstance(manager.store.redis, fakeredis.FakeRedis)

    def record_step(study_id: str, request: dict[str, Any], countdown: float | None = None
                    ) -> Iterator[Any]:
        # a delayed step shows its delay with its request
        steps.append((study_id, request if countdown is None else {**request, "in": countdown}))
        return iter(())  # no pipeline: nothing is submitted

    monkeypatch.setattr(manager, "_stepping", record_step)
    return manager


def create(studies: StudyManager, name: str = "tune", **kwargs: Any) -> Study:
    fields: dict[str, Any] = {
        "parameters": [Range("x", 0.0, 1.0), Choice("c", ["a", "b"])],
        "objectives": [Objective("loss")],
    }
    fields.update(kwargs)
    return studies.create(name, **fields)


def trial(index: int, status: TrialStatus = TrialStatus.COMPLETED, **values: Any) -> Trial:
    return Trial(
        index=index,
        params={"x": 0.5, "c": "a"},
        status=status,
        values=values or None,
        created_at=T0,
    )


def put_trials(studies: StudyManager, study: Study, trials: list[Trial]) -> None:
    studies.store.save_step(study, trials, None, 0)


def move(studies: StudyManager, study_id: str, *path: StudyStatus) -> None:
    for to in path:
        current = studies.get(study_id).status
        assert studies.store.set_status(study_id, to, {current}) is to


# -- create -------------------------------------------------------------------------------


def test_create_fills_a_random_seed(
    studies: StudyManager, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    a = create(studies, strategy=Strategy(max_trials=7))
    b = create(studies)
    for study in (a, b):
        seed = study.spec.strategy.seed
        assert isinstance(seed, int) and 0 <= seed < 2**31
        assert studies.get(study.id) == study  # the seed is stored with it
        assert study.status is S.CREATED
    assert a.spec.strategy.max_trials == 7  # the rest of the strategy is kept
    assert a.spec.strategy.seed != b.spec.strategy.seed
    assert a.id != b.id
    assert steps == []  # creating asks for no step


def test_create_keeps_a_given_seed(studies: StudyManager) -> None:
    study = create(studies, strategy=Strategy(seed=0))
    assert study.spec.strategy.seed == 0
    assert studies.get(study.id).spec.strategy.seed == 0


def test_create_validates_the_spec(studies: StudyManager) -> None:
    with pytest.raises(ValidationError, match="duplicate parameter names"):
        create(studies, parameters=[Range("x", 0, 1), Range("x", 0, 2)])
    assert studies.list() == []


def test_create_with_unknown_evaluator(studies: StudyManager) -> None:
    with pytest.raises(UnknownHandlerError, match=r"no\.such\.handler") as info:
        create(studies, evaluator="no.such.handler")
    assert info.value.name == "no.such.handler"
    assert studies.list() == []  # nothing stored


def test_create_with_an_evaluator_a_worker_declared(
    studies: StudyManager, bq: BOQueue, fake: fakeredis.FakeRedis
) -> None:
    fake.hset(bq.keys.handlers, "train.eval", json.dumps({"queue": "default"}))
    study = create(studies, evaluator="train.eval", evaluator_options={"epochs": 2})
    stored = studies.get(study.id)
    assert stored.spec.evaluator == "train.eval"
    assert stored.spec.evaluator_options == {"epochs": 2}


def test_get_unknown(studies: StudyManager) -> None:
    with pytest.raises(StudyNotFoundError):
        studies.get("nope")


# -- respec -------------------------------------------------------------------------------


def test_set_parameter_space_while_created(studies: StudyManager) -> None:
    study = create(studies)
    changed = studies.set_parameter_space(
        study.id,
        [Range("x", 0.0, 2.0), Range("y", 0.0, 2.0)],
        [LinearConstraint(coefficients={"x": 1, "y": 1}, bound=3)],
    )
    assert [p.name for p in changed.spec.parameters] == ["x", "y"]
    assert changed.spec.parameter_constraints[0].bound == 3
    assert changed.spec.objectives == study.spec.objectives
    assert changed.spec.strategy == study.spec.strategy
    assert studies.get(study.id) == changed


def test_set_parameter_space_validates(studies: StudyManager) -> None:
    study = create(studies)
    with pytest.raises(ValidationError, match="linear-scale range parameters"):
        studies.set_parameter_space(
            study.id, [Range("x", 0, 1)], [LinearConstraint(coefficients={"z": 1}, bound=1)]
        )
    assert studies.get(study.id).spec == study.spec


def test_set_strategy_while_created(studies: StudyManager) -> None:
    study = create(studies)
    changed = studies.set_strategy(study.id, Strategy(initial_trials=2, max_trials=9, seed=3))
    assert changed.spec.strategy == Strategy(initial_trials=2, max_trials=9, seed=3)
    assert changed.spec.parameters == study.spec.parameters
    assert studies.get(study.id).spec.strategy.max_trials == 9


@pytest.mark.parametrize("status", [S.INITIALIZING, S.FAILED])
def test_respec_after_the_status_moved(studies: StudyManager, status: StudyStatus) -> None:
    study = create(studies)
    move(studies, study.id, status)
    with pytest.raises(InvalidTransitionError, match="fixed once a study has started"):
        studies.set_parameter_space(study.id, [Range("x", 0.0, 5.0)])
    with pytest.raises(InvalidTransitionError, match="fixed once a study has started"):
        studies.set_strategy(study.id, Strategy(max_trials=99))
    assert studies.get(study.id).spec == study.spec


# -- list ---------------------------------------------------------------------------------


def test_list_filters(studies: StudyManager) -> None:
    a1 = create(studies, "a")
    a2 = create(studies, "a")
    b = create(studies, "b")
    move(studies, a2.id, S.INITIALIZING, S.ACTIVE)

    assert {s.id for s in studies.list()} == {a1.id, a2.id, b.id}
    assert [s.id for s in studies.list(status=S.ACTIVE)] == [a2.id]
    assert [s.id for s in studies.list(status="ACTIVE")] == [a2.id]
    assert {s.id for s in studies.list(status=S.CREATED)} == {a1.id, b.id}
    assert {s.id for s in studies.list(name="a")} == {a1.id, a2.id}
    assert [s.id for s in studies.list(status=S.CREATED, name="a")] == [a1.id]
    assert studies.list(status=S.PAUSED) == []
    assert studies.list(name="c") == []
    with pytest.raises(ValueError):
        studies.list(status="NOPE")


# -- best and pareto ----------------------------------------------------------------------


def test_best_minimize(studies: StudyManager) -> None:
    study = create(studies)
    put_trials(
        studies,
        study,
        [
            trial(0, loss=3.0),
            trial(1, loss=1.0),
            trial(2, loss=(2.0, 0.1)),
            trial(3, TrialStatus.RUNNING),
            trial(4, TrialStatus.RUNNING, loss=-100.0),  # not completed: ignored
            trial(5, TrialStatus.FAILED, loss=-50.0),
            trial(6, TrialStatus.ABANDONED, loss=-10.0),
        ],
    )
    best = studies.best(study.id)
    assert best is not None and best.index == 1
    assert best.values == {"loss": 1.0}


def test_best_maximize(studies: StudyManager) -> None:
    study = create(studies, objectives=[Objective("score", minimize=False)])
    put_trials(
        studies,
        study,
        [
            trial(0, score=3.0),
            trial(1, score=(7.0, 0.5)),
            trial(2, score=-1.0),
            trial(3, TrialStatus.FAILED, score=100.0),
        ],
    )
    best = studies.best(study.id)
    assert best is not None and best.index == 1


def test_best_ignores_infeasible(studies: StudyManager) -> None:
    study = create(
        studies,
        outcome_constraints=[
            OutcomeConstraint(metric="mem", op="<=", bound=10.0),
            OutcomeConstraint(metric="acc", op=">=", bound=0.5),
        ],
    )
    put_trials(
        studies,
        study,
        [
            trial(0, loss=0.1, mem=20.0, acc=0.9),  # too much memory
            trial(1, loss=0.2, mem=5.0, acc=0.4),  # too inaccurate
            trial(2, loss=0.5, mem=10.0, acc=0.5),  # on both bounds: feasible
            trial(3, loss=0.7, mem=1.0, acc=0.9),
        ],
    )
    best = studies.best(study.id)
    assert best is not None and best.index == 2


def test_best_breaks_ties_by_lowest_index(studies: StudyManager) -> None:
    study = create(studies)
    put_trials(
        studies,
        study,
        [trial(5, loss=1.0), trial(3, loss=1.0), trial(4, loss=2.0), trial(7, loss=1.0)],
    )
    best = studies.best(study.id)
    assert best is not None and best.index == 3


def test_best_with_no_completed_trial(studies: StudyManager) -> None:
    study = create(studies)
    assert studies.best(study.id) is None
    put_trials(studies, study, [trial(0, TrialStatus.RUNNING), trial(1, TrialStatus.FAILED)])
    assert studies.best(study.id) is None


def test_best_refuses_several_objectives(studies: StudyManager) -> None:
    study = create(studies, objectives=[Objective("a"), Objective("b")])
    with pytest.raises(StudyError, match="pareto"):
        studies.best(study.id)


def test_pareto_two_objectives(studies: StudyManager) -> None:
    study = create(studies, objectives=[Objective("a"), Objective("b", minimize=False)])
    put_trials(
        studies,
        study,
        [
            trial(0, a=1.0, b=1.0),
            trial(1, a=2.0, b=3.0),
            trial(2, a=3.0, b=2.0),  # dominated by 1
            trial(3, a=1.0, b=0.5),  # dominated by 0 (equal a, worse b)
            trial(4, a=0.5, b=0.0),  # best a
            trial(5, a=4.0, b=3.0),  # dominated by 1 (worse a, equal b)
            trial(6, TrialStatus.RUNNING, a=0.0, b=10.0),  # would dominate all, not completed
            trial(7, a=1.0, b=1.0),  # equal to 0: neither dominates the other
            trial(8, a=(1.5, 0.2), b=(2.0, 0.1)),  # between 0 and 1
        ],
    )
    front = studies.pareto(study.id)
    assert [t.index for t in front] == [0, 1, 4, 7, 8]


def test_pareto_ignores_infeasible_and_empty(studies: StudyManager) -> None:
    study = create(
        studies,
        objectives=[Objective("a"), Objective("b")],
        outcome_constraints=[OutcomeConstraint(metric="mem", op="<=", bound=1.0)],
    )
    assert studies.pareto(study.id) == []
    put_trials(
        studies,
        study,
        [
            trial(0, a=0.0, b=0.0, mem=2.0),  # dominates all, infeasible
            trial(1, a=1.0, b=2.0, mem=1.0),
            trial(2, a=2.0, b=1.0, mem=0.0),
            trial(3, a=2.0, b=2.0, mem=0.0),
        ],
    )
    assert [t.index for t in studies.pareto(study.id)] == [1, 2]


# -- report -------------------------------------------------------------------------------


@pytest.fixture
def running(studies: StudyManager) -> Study:
    study = create(studies)
    put_trials(
        studies,
        study,
        [
            trial(0, TrialStatus.RUNNING),
            trial(1, TrialStatus.RUNNING),
            Trial(
                index=2,
                params={"x": 0.1, "c": "b"},
                status=TrialStatus.FAILED,
                error="lease",
                created_at=T0,
            ),
        ],
    )
    return study


def test_report_writes_once_and_asks_for_one_step(
    studies: StudyManager, running: Study, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    assert studies.report(running.id, 0, {"loss": 0.31}) is True
    # ask/tell: a moment later, so that the next suggest's step tells it first
    assert steps == [(running.id, {"told": 0, "in": TELL_AFTER_S})]
    [entry] = studies.store.inbox(running.id)
    assert entry.pop("at") == pytest.approx(time.time(), abs=60)  # when it was reported
    assert entry == {"index": 0, "values": {"loss": 0.31}}

    assert studies.report(running.id, 0, {"loss": 0.31}) is False
    assert len(steps) == 1  # no second step
    assert studies.store.inbox_size(running.id) == 1


def test_report_same_values_in_another_form(
    studies: StudyManager, running: Study, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    assert studies.report(running.id, 0, {"loss": 1}) is True
    assert studies.report(running.id, 0, {"loss": 1.0}) is False
    assert studies.report(running.id, 1, {"loss": [0.5, 0.1]}) is True
    assert studies.report(running.id, 1, {"loss": (0.5, 0.1)}) is False
    assert len(steps) == 2
    entry = studies.store.inbox(running.id)[1]
    assert {k: v for k, v in entry.items() if k != "at"} == {
        "index": 1, "values": {"loss": [0.5, 0.1]}
    }


def test_report_conflict_invalid_and_closed(
    studies: StudyManager, running: Study, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    studies.report(running.id, 0, {"loss": 0.31})
    with pytest.raises(StudyError, match="different result"):
        studies.report(running.id, 0, {"loss": 0.32})
    with pytest.raises(InvalidResultError):
        studies.report(running.id, 1, {"loss": float("nan")})
    with pytest.raises(InvalidResultError):
        studies.report(running.id, 1, {"acc": 0.5})
    with pytest.raises(StudyError, match="trial 2 is FAILED: lease"):
        studies.report(running.id, 2, {"loss": 0.5})
    with pytest.raises(LookupError):
        studies.report(running.id, 9, {"loss": 0.5})
    with pytest.raises(StudyNotFoundError):
        studies.report("nope", 0, {"loss": 0.5})
    assert len(steps) == 1
    assert studies.store.inbox_size(running.id) == 1


# -- lifecycle ----------------------------------------------------------------------------


def test_pause_from_created(studies: StudyManager) -> None:
    study = create(studies)
    with pytest.raises(InvalidTransitionError, match="from CREATED to PAUSED"):
        studies.pause(study.id)
    assert studies.get(study.id).status is S.CREATED


def test_pause_from_active_and_resume(
    studies: StudyManager, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    study = create(studies)
    move(studies, study.id, S.INITIALIZING, S.ACTIVE)
    assert studies.pause(study.id).status is S.PAUSED
    assert steps == []
    assert studies.resume(study.id).status is S.ACTIVE
    assert steps == [(study.id, {})]


def test_wait_returns_at_once_when_completed(studies: StudyManager) -> None:
    study = create(studies)
    move(studies, study.id, S.INITIALIZING, S.ACTIVE, S.COMPLETED)
    started = time.monotonic()
    done = studies.wait(study.id, timeout=5, poll_s=1)
    assert time.monotonic() - started < 0.5
    assert done.status is S.COMPLETED
    assert done.id == study.id


def test_wait_times_out_on_an_active_study(studies: StudyManager) -> None:
    study = create(studies)
    move(studies, study.id, S.INITIALIZING, S.ACTIVE)
    started = time.monotonic()
    with pytest.raises(StudyTimeoutError, match=r"still ACTIVE after 0\.3 s") as info:
        studies.wait(study.id, timeout=0.3, poll_s=0.05)
    elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, StudyError)
    assert 0.3 <= elapsed < 2.0
    assert studies.get(study.id).status is S.ACTIVE


def test_wait_unknown_study(studies: StudyManager) -> None:
    with pytest.raises(StudyNotFoundError):
        studies.wait("nope", timeout=0.1, poll_s=0.05)


def test_no_ax_engine_imported(studies: StudyManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """The facade's study calls work where Ax cannot be imported at all (a None in
    sys.modules makes `import` raise), whatever this process imported before."""
    for name in ("bo_queue.studies.engine", "ax", "torch", "botorch"):
        monkeypatch.setitem(sys.modules, name, None)
    study = create(studies)
    put_trials(studies, study, [trial(0, loss=1.0)])
    best = studies.best(study.id)
    assert best is not None and best.index == 0
