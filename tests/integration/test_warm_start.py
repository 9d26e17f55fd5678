"""Warm start and cloning on real workers, through Ax: a study starts from the completed
trials of others that fit its space and metrics."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from bo_queue import (
    BOQueue,
    Objective,
    Range,
    Strategy,
    StudyNotFoundError,
    StudyStatus,
    TrialStatus,
    ValidationError,
)
from tests.conftest import ROOT, Cluster, make_cluster

QUEUES = ("default", "bo", "evaluate")
SPACE = [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)]
LOSS = [Objective("loss", minimize=True)]  # t.bowl: sum of (v - 0.3)^2, 0 at (0.3, 0.3)


@pytest.fixture(scope="module")
def warm_cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=2, concurrency=2, queues=QUEUES)
    yield c
    c.close()


@pytest.fixture
def bq(warm_cluster: Cluster) -> BOQueue:
    return warm_cluster.producer()


def sobol_source(bq: BOQueue, trials: int, seed: int, **described: Any) -> str:
    """A running study of `trials` quasi-random points on the bowl."""
    study = bq.studies.create(
        name=f"source-{seed}", parameters=SPACE, objectives=LOSS, evaluator="t.bowl",
        strategy=Strategy(initial_trials=trials, max_trials=trials, seed=seed), **described,
    )
    bq.studies.run(study.id)
    return study.id


def own_best(bq: BOQueue, study_id: str) -> float:
    """The best loss among the trials the study generated itself."""
    return min(
        float(t.values["loss"])  # type: ignore[index,arg-type]
        for t in bq.studies.trials(study_id, TrialStatus.COMPLETED)
        if t.generator != "warm-start"
    )


@pytest.mark.timeout(300)
def test_warm_started_study_beats_a_cold_one_with_the_same_budget(bq: BOQueue) -> None:
    seeds = (0, 1, 2)
    sources = {seed: sobol_source(bq, 8, seed) for seed in seeds}
    for source in sources.values():
        assert bq.studies.wait(source, timeout=120).status is StudyStatus.COMPLETED
    budget = Strategy(initial_trials=3, max_trials=4, seed=0)
    warm, cold = {}, {}
    for seed, source in sources.items():
        strategy = budget.model_copy(update={"seed": 100 + seed})
        warm[seed] = bq.studies.create(
            name=f"warm-{seed}", parameters=SPACE, objectives=LOSS, evaluator="t.bowl",
            strategy=strategy, warm_start_from=[source],
        ).id
        cold[seed] = bq.studies.create(
            name=f"cold-{seed}", parameters=SPACE, objectives=LOSS, evaluator="t.bowl",
            strategy=strategy,
        ).id
    for study_id in [*warm.values(), *cold.values()]:
        bq.studies.run(study_id)
    for study_id in [*warm.values(), *cold.values()]:
        done = bq.studies.wait(study_id, timeout=240)
        assert done.status is StudyStatus.COMPLETED, done.message
        assert done.completed_trials == 4  # attached trials do not count to max_trials

    for seed, study_id in warm.items():
        trials = bq.studies.trials(study_id)
        attached = [t for t in trials if t.generator == "warm-start"]
        assert len(attached) == 8 and all(t.status is TrialStatus.COMPLETED for t in attached)
        source_points = {tuple(t.params.values()) for t in bq.studies.trials(sources[seed])}
        assert {tuple(t.params.values()) for t in attached} == source_points
        # 8 attached >= 3 initial: the initial design is used up, the model makes every trial
        own = [t for t in trials if t.generator != "warm-start"]
        assert {t.generator for t in own} == {"MBM"}, [t.generator for t in own]
    warm_best = statistics.median(own_best(bq, s) for s in warm.values())
    cold_best = statistics.median(own_best(bq, s) for s in cold.values())
    assert warm_best < cold_best, (warm_best, cold_best)


@pytest.mark.timeout(300)
def test_a_clone_with_a_shrunk_space_attaches_only_the_trials_inside_it(
    bq: BOQueue, warm_cluster: Cluster
) -> None:
    source = sobol_source(bq, 8, seed=7, description="the bowl", metadata={"owner": "ws"})
    assert bq.studies.wait(source, timeout=120).status is StudyStatus.COMPLETED
    clone = bq.studies.clone(
        source, name="narrow", parameters=[Range("x", 0.0, 0.5), Range("y", 0.0, 1.0)],
        strategy=Strategy(initial_trials=10, max_trials=10, seed=3),
    )
    assert clone.status is StudyStatus.CREATED and clone.warm_start_from == [source]
    assert clone.name == "narrow" and clone.spec.evaluator == "t.bowl"
    assert (clone.description, clone.metadata) == ("the bowl", {"owner": "ws"})
    assert clone.spec.parameters[0] == Range("x", 0.0, 0.5)

    (first,) = bq.studies.suggest(clone.id, 1)
    inside = {
        (t.params["x"], t.params["y"]) for t in bq.studies.trials(source)
        if float(t.params["x"]) <= 0.5  # type: ignore[arg-type]
    }
    assert 0 < len(inside) < 8  # the shrink left some out
    attached = [t for t in bq.studies.trials(clone.id) if t.generator == "warm-start"]
    assert {(t.params["x"], t.params["y"]) for t in attached} == inside
    assert first.index == len(inside) and first.generator == "Sobol"
    assert float(first.params["x"]) <= 0.5  # type: ignore[arg-type]
    assert bq.studies.get(clone.id).completed_trials == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": warm_cluster.redis_url,
           "BO_QUEUE_NAMESPACE": warm_cluster.namespace}
    status = subprocess.run([sys.executable, "-m", "bo_queue.cli", "study", "status", clone.id],
                            capture_output=True, text=True, timeout=60, env=env, check=True)
    lines = status.stdout.splitlines()
    assert "description: the bowl" in lines and 'metadata: {"owner": "ws"}' in lines
    assert f"warm-started from: {source} ({len(inside)} trials attached)" in lines
    assert "trials: 0/10 completed, 1 running, 0 failed" in lines


def test_bad_warm_start_sources_are_clear_errors_and_nothing_is_stored(
    bq: BOQueue, warm_cluster: Cluster
) -> None:
    before = {s.id for s in bq.studies.list()}
    other = BOQueue(redis_url=warm_cluster.redis_url, namespace=warm_cluster.namespace + "x")
    try:
        elsewhere = other.studies.create(name="elsewhere", parameters=SPACE, objectives=LOSS)
        with pytest.raises(StudyNotFoundError, match=elsewhere.id):
            bq.studies.create(name="a", parameters=SPACE, objectives=LOSS,
                              warm_start_from=[elsewhere.id])
    finally:
        other.close()
    with pytest.raises(StudyNotFoundError, match="0123456789abcdef"):
        bq.studies.create(name="b", parameters=SPACE, objectives=LOSS,
                          warm_start_from=["0123456789abcdef"])
    accuracy = bq.studies.create(name="acc", parameters=SPACE, objectives=[Objective("acc")])
    with pytest.raises(ValidationError, match=r"no values for \['loss'\]"):
        bq.studies.create(name="c", parameters=SPACE, objectives=LOSS,
                          warm_start_from=[accuracy.id])
    with pytest.raises(ValidationError, match="parameters"):
        bq.studies.create(name="d", parameters=[Range("z", 0.0, 1.0)],
                          objectives=[Objective("acc")], warm_start_from=[accuracy.id])
    with pytest.raises(ValidationError, match="list of study ids"):
        bq.studies.create(name="e", parameters=SPACE, objectives=LOSS,
                          warm_start_from=accuracy.id)
    with pytest.raises(ValidationError, match="StudySpec fields"):
        bq.studies.clone(accuracy.id, budget=3)
    with pytest.raises(StudyNotFoundError):
        bq.studies.clone("0123456789abcdef")
    assert {s.id for s in bq.studies.list()} == before | {accuracy.id}


@pytest.mark.timeout(300)
def test_the_manuals_warm_start_example_runs_as_written(
    warm_cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = (ROOT / "docs" / "studies.md").read_text()
    section = page.split("## Warm start and cloning", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    expected = [line.rsplit("# ", 1)[1].strip() for line in code.splitlines()
                if line.startswith("print(")]
    monkeypatch.setenv("BO_QUEUE_REDIS_URL", warm_cluster.redis_url)
    monkeypatch.setenv("BO_QUEUE_NAMESPACE", warm_cluster.namespace)
    exec(compile(code, "docs/studies.md", "exec"), {})  # the manual's own code
    assert capsys.readouterr().out.splitlines() == expected
