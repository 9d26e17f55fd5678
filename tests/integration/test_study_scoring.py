"""Every reader of a study's best trial agrees, on a real Redis: `bq.studies.best`, the
dashboard, `bq.monitor.metrics()` and the Prometheus exposition all go by
bo_queue.studies.scoring, so an infeasible trial is nobody's best. The trials are written
with the study store (no workers, no Ax)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bo_queue import BOQueue
from bo_queue.api.dashboard import dashboard_data, render_fragment, snapshot
from bo_queue.monitor.prometheus import make_registry
from bo_queue.studies.models import (
    Objective,
    OutcomeConstraint,
    Range,
    Study,
    StudyStatus,
    Trial,
    TrialStatus,
)
from tests.conftest import new_namespace


@pytest.fixture
def bq(redis_url: str) -> Iterator[BOQueue]:
    queue = BOQueue(redis_url=redis_url, namespace=new_namespace())
    yield queue
    queue.close()


def active_study(bq: BOQueue, minimize: bool, trials: list[tuple[float, float]]) -> Study:
    """An ACTIVE study of one objective and the constraint mem <= 10, with a completed
    trial per (loss, mem) and one still running."""
    study = bq.studies.create(
        "scored", [Range("x", 0.0, 1.0)], [Objective("loss", minimize=minimize)],
        outcome_constraints=[OutcomeConstraint(metric="mem", op="<=", bound=10.0)],
    )
    now = datetime.now(UTC)
    records = [
        Trial(index=i, params={"x": i / 10}, status=TrialStatus.COMPLETED,
              values={"loss": loss, "mem": mem}, created_at=now, finished_at=now)
        for i, (loss, mem) in enumerate(trials)
    ]
    records.append(Trial(index=len(trials), params={"x": 0.9}, created_at=now))  # RUNNING
    store = bq.studies.store
    store.save_step(study.model_copy(update={"completed_trials": len(trials),
                                             "running_trials": 1}), records, None, 0)
    for to in (StudyStatus.INITIALIZING, StudyStatus.ACTIVE):
        assert store.set_status(study.id, to, {bq.studies.get(study.id).status}) is to
    return study


def prometheus_best(bq: BOQueue, study_id: str) -> float | None:
    text = generate_latest(make_registry(bq.monitor)).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bo_queue_study_best_value" and sample.labels["study"] == study_id:
                return float(sample.value)
    return None


@pytest.mark.parametrize(("minimize", "expected"), [(True, 2), (False, 1)])
def test_every_reader_reports_the_same_feasible_best_trial(
    bq: BOQueue, minimize: bool, expected: int
) -> None:
    # trial 0 has the lowest loss and trial 3 the highest, both over the memory bound
    study = active_study(bq, minimize, [(0.1, 20.0), (0.4, 5.0), (0.3, 9.0), (0.9, 10.5)])
    best = bq.studies.best(study.id)
    assert best is not None and best.index == expected
    value = best.values["loss"] if best.values else None
    assert value == (0.3 if minimize else 0.4)

    data = json.loads(dashboard_data(study.id, bq).body)
    assert data["best"]["index"] == expected
    snap = snapshot(bq, study.id)
    assert snap.best == best
    assert f"(trial {expected})" in render_fragment(snap)

    [metrics] = bq.monitor.metrics().studies
    assert metrics.id == study.id and metrics.best_value == value

    assert prometheus_best(bq, study.id) == value


def test_no_feasible_trial_is_no_best_anywhere(bq: BOQueue) -> None:
    study = active_study(bq, True, [(0.1, 20.0), (0.2, 11.0)])
    assert bq.studies.best(study.id) is None
    assert json.loads(dashboard_data(study.id, bq).body)["best"] is None
    [metrics] = bq.monitor.metrics().studies
    assert metrics.best_value is None
    assert prometheus_best(bq, study.id) is None
