"""The early-stopping rules (study_intermediate.lua through bq.studies.report_intermediate)
on fakeredis with no workers: `_stepping` (the submit of a study step) is replaced by a
recorder, so trials stay as the test puts them and only the decision at report time runs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from bo_queue import BOQueue, EarlyStopping, FileStorage
from bo_queue.errors import (
    InvalidResultError,
    InvalidTransitionError,
    TrialNotFoundError,
    ValidationError,
)
from bo_queue.studies.manager import StudyManager
from bo_queue.studies.models import Objective, Range, Strategy, Study, StudySpec, Trial, TrialStatus

T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def steps() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def studies(
    bq: BOQueue, server: fakeredis.FakeServer, steps: list[tuple[str, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> StudyManager:
    manager = bq.studies
    manager.store.raw = fakeredis.FakeRedis(server=server)
    def stepping(study_id: str, asked: dict[str, Any], countdown: float | None = None
                 ) -> Iterator[Any]:
        steps.append((study_id, asked))
        return iter(())  # no pipeline: nothing is submitted

    monkeypatch.setattr(manager, "_stepping", stepping)
    return manager


def study_with(
    studies: StudyManager, rules: EarlyStopping | None, trials: int = 6, minimize: bool = True
) -> Study:
    study = studies.create(
        "curves", [Range("x", 0.0, 1.0)], [Objective("loss", minimize=minimize)],
        Strategy(initial_trials=trials, max_trials=trials, seed=0, early_stopping=rules),
    )
    running = [Trial(index=i, params={"x": i / 10}, created_at=T0) for i in range(trials)]
    studies.store.save_step(study, running, None, 0)
    return study


def curve(studies: StudyManager, study: Study, index: int, losses: list[float]) -> list[bool]:
    """Report `losses` as steps 0, 1, ...: the decisions."""
    return [studies.report_intermediate(study.id, index, step, {"loss": loss})
            for step, loss in enumerate(losses)]


def test_median_rule_stops_a_trial_worse_than_the_median_at_its_step(
    studies: StudyManager, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    study = study_with(studies, EarlyStopping(percentile=50, min_progression=1, min_curves=3))
    assert curve(studies, study, 0, [1.0, 0.9, 0.8]) == [False] * 3
    assert curve(studies, study, 1, [1.0, 0.5, 0.4]) == [False] * 3
    # at step 1: 0.9, 0.5 and its own 0.95: three curves, median 0.9, 0.95 is worse
    assert curve(studies, study, 2, [5.0, 0.95]) == [False, True]  # step 0 < min_progression
    assert steps == [(study.id, {})]  # a step to tell Ax, once
    # better than the median of 0.9, 0.5, 0.95, 0.6 (0.75): goes on
    assert curve(studies, study, 3, [5.0, 0.6]) == [False, False]
    entry = studies.store.inbox(study.id)[0]
    assert entry["index"] == 2 and entry["early_stopped"] is True
    assert entry["values"] == {"loss": 0.95} and entry["step"] == 1
    assert studies.intermediate(study.id, 2) == [(0, {"loss": 5.0}), (1, {"loss": 0.95})]


def test_min_curves_holds_the_decision_until_enough_trials_reached_the_step(
    studies: StudyManager,
) -> None:
    study = study_with(studies, EarlyStopping(percentile=50, min_progression=0, min_curves=3))
    assert curve(studies, study, 0, [0.1, 0.1]) == [False, False]
    assert curve(studies, study, 1, [9.0, 9.0]) == [False, False]  # two curves: no decision
    assert curve(studies, study, 2, [0.2]) == [False]  # median of 0.1, 9, 0.2: 0.2
    assert curve(studies, study, 3, [8.0]) == [True]  # four at step 0: median 4.1


def test_percentile_is_flipped_for_an_objective_to_maximize(studies: StudyManager) -> None:
    # Ax's meaning: percentile 25 stops the bottom quarter by performance
    rules = EarlyStopping(percentile=25, min_progression=0, min_curves=4)
    study = study_with(studies, rules, minimize=False)
    for index, accuracy in enumerate([0.9, 0.8, 0.7]):
        assert curve(studies, study, index, [accuracy]) == [False]
    # 0.9 0.8 0.7 0.6: the 25th percentile is 0.675; 0.6 is below it
    assert curve(studies, study, 3, [0.6]) == [True]
    assert curve(studies, study, 4, [0.7]) == [False]  # 0.6 0.7 0.7 0.8 0.9: 0.7


def test_threshold_rule_stops_past_min_progression_without_comparing(
    studies: StudyManager,
) -> None:
    rules = EarlyStopping(percentile=None, threshold=0.5, min_progression=2)
    study = study_with(studies, rules)
    assert curve(studies, study, 0, [0.9, 0.8, 0.7]) == [False, False, True]
    assert curve(studies, study, 1, [0.9, 0.8, 0.5, 0.4]) == [False] * 4  # 0.5 is not worse


def test_without_rules_curves_are_recorded_and_nothing_stops(studies: StudyManager) -> None:
    study = study_with(studies, None)
    assert curve(studies, study, 0, [1.0, 2.0, 3.0]) == [False] * 3
    assert curve(studies, study, 1, [9.0, 9.0, 9.0]) == [False] * 3
    assert studies.intermediate(study.id, 1) == [(0, {"loss": 9.0}), (1, {"loss": 9.0}),
                                                 (2, {"loss": 9.0})]


def test_a_repeated_report_answers_as_before_and_writes_nothing(
    studies: StudyManager, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    study = study_with(studies, EarlyStopping(percentile=None, threshold=1.0))
    assert studies.report_intermediate(study.id, 0, 0, {"loss": 0.5}) is False
    assert studies.report_intermediate(study.id, 0, 0, {"loss": 0.5}) is False
    assert studies.report_intermediate(study.id, 0, 1, {"loss": 2.0}) is True
    assert studies.report_intermediate(study.id, 0, 1, {"loss": 2}) is True  # the same value
    assert len(studies.store.inbox(study.id)) == 1 and len(steps) == 1
    assert studies.intermediate(study.id, 0) == [(0, {"loss": 0.5}), (1, {"loss": 2.0})]
    with pytest.raises(ValidationError, match="has ended"):  # a later step of a stopped trial
        studies.report_intermediate(study.id, 0, 2, {"loss": 0.1})


def test_bad_reports_are_validation_errors_that_write_nothing(studies: StudyManager) -> None:
    study = study_with(studies, EarlyStopping())
    assert studies.report_intermediate(study.id, 0, 3, {"loss": [0.5, 0.1]}) is False
    before = studies.store.redis.hgetall(studies.store.curves_key(study.id))
    bad: list[tuple[Any, Any, type[Exception], str]] = [
        (2, {"loss": 0.4}, ValidationError, "goes backwards"),
        (3, {"loss": 0.4}, ValidationError, "other values at step 3"),
        (4, {"acc": 0.4}, InvalidResultError, "expected values"),
        (4, {"loss": float("nan")}, InvalidResultError, "finite"),
        (-1, {"loss": 0.4}, ValidationError, "a step is an integer"),
        (1.5, {"loss": 0.4}, ValidationError, "a step is an integer"),
        (True, {"loss": 0.4}, ValidationError, "a step is an integer"),
        (4, "0.4", InvalidResultError, "mapping"),
    ]
    for step, values, error, message in bad:
        with pytest.raises(error, match=message):
            studies.report_intermediate(study.id, 0, step, values)
    with pytest.raises(TrialNotFoundError):
        studies.report_intermediate(study.id, 99, 0, {"loss": 0.4})
    assert studies.store.redis.hgetall(studies.store.curves_key(study.id)) == before
    assert studies.intermediate(study.id, 0) == [(3, {"loss": (0.5, 0.1)})]


def test_a_trial_that_ended_or_a_study_that_ended_takes_no_curve(
    studies: StudyManager,
) -> None:
    study = study_with(studies, EarlyStopping())
    studies.report(study.id, 1, {"loss": 0.2})  # a result: the trial has ended
    with pytest.raises(ValidationError, match="trial 1 has ended: it takes no"):
        studies.report_intermediate(study.id, 1, 0, {"loss": 0.2})
    failed = Trial(index=2, params={"x": 0.2}, status=TrialStatus.FAILED, created_at=T0)
    studies.store.save_step(study, [failed], None, 0)
    with pytest.raises(ValidationError, match=r"trial 2 has ended \(FAILED\)"):
        studies.report_intermediate(study.id, 2, 0, {"loss": 0.2})
    assert studies.intermediate(study.id, 1) == [] == studies.intermediate(study.id, 2)
    studies.fail(study.id, "given up")
    with pytest.raises(InvalidTransitionError, match="has ended"):
        studies.report_intermediate(study.id, 0, 0, {"loss": 0.2})


def test_curves_survive_a_save_and_load_of_the_whole_state(studies: StudyManager) -> None:
    study = study_with(studies, EarlyStopping(percentile=None, threshold=1.0))
    curve(studies, study, 0, [0.5, 0.4])
    curve(studies, study, 1, [0.5, 3.0])
    stopped = studies.trial(study.id, 1).model_copy(
        update={"status": TrialStatus.EARLY_STOPPED, "values": {"loss": 3.0}})
    studies.store.save_step(study, [stopped], None, 1)  # as the step records it
    state = studies.store.load(study.id)
    assert state.curves == {0: [(0, {"loss": 0.5}), (1, {"loss": 0.4})],
                            1: [(0, {"loss": 0.5}), (1, {"loss": 3.0})]}
    studies.store.delete(study.id)
    studies.store.save(state)
    assert studies.store.load(study.id).curves == state.curves
    # the rules go on from the curves written back: a repeat, then a new point
    assert studies.report_intermediate(study.id, 1, 1, {"loss": 3.0}) is True
    assert studies.report_intermediate(study.id, 0, 2, {"loss": 2.0}) is True


def test_early_stopping_is_checked_with_the_spec() -> None:
    with pytest.raises(ValidationError, match="needs a rule"):
        EarlyStopping(percentile=None)
    with pytest.raises(ValidationError, match="percentile"):
        EarlyStopping(percentile=150)
    with pytest.raises(ValidationError, match="min_curves"):
        EarlyStopping(min_curves=0)
    with pytest.raises(ValidationError, match=r"early_stopping\.metric must be an objective"):
        StudySpec(name="s", parameters=[Range("x", 0.0, 1.0)], objectives=[Objective("loss")],
                  strategy=Strategy(early_stopping=EarlyStopping(metric="acc")))
    assert EarlyStopping() == EarlyStopping(percentile=50.0, min_progression=0, min_curves=5)


def test_curves_go_to_sql_and_file_storage_and_back(
    studies: StudyManager, tmp_path: Path
) -> None:
    from bo_queue.studies.sql import SQLStorage

    study = study_with(studies, EarlyStopping(percentile=None, threshold=1.0))
    curve(studies, study, 0, [0.5, 0.4])
    curve(studies, study, 1, [0.5, 3.0])
    stopped = studies.trial(study.id, 1).model_copy(
        update={"status": TrialStatus.EARLY_STOPPED, "values": {"loss": 3.0}})
    studies.store.save_step(study.model_copy(update={"early_stopped_trials": 1}), [stopped],
                            None, 1)
    expected = {0: [(0, {"loss": 0.5}), (1, {"loss": 0.4})],
                1: [(0, {"loss": 0.5}), (1, {"loss": 3.0})]}
    assert studies.export(study.id)["curves"] == {
        str(index): [[step, values] for step, values in points]
        for index, points in expected.items()}
    with SQLStorage(f"sqlite:///{tmp_path / 'studies.db'}") as db:
        studies.persist(study.id, db)
        again = db.load(study.id)
        assert again.curves == expected
        assert again.study.early_stopped_trials == 1
        assert again.trials[1].status is TrialStatus.EARLY_STOPPED
    files = FileStorage(tmp_path / "files")
    studies.persist(study.id, files)
    assert files.load(study.id).curves == expected
    studies.delete(study.id)
    studies.load(study.id, files)  # back into Redis: the stop is still the stop
    assert studies.intermediate(study.id, 1) == expected[1]
    assert studies.report_intermediate(study.id, 1, 1, {"loss": 3.0}) is True
    with pytest.raises(ValidationError, match="has ended"):
        studies.report_intermediate(study.id, 1, 2, {"loss": 0.1})
