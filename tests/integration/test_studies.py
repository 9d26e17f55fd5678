"""Optimization studies on real workers: closed loop, ask/tell, failures, lifecycle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bo_queue import (
    BOQueue,
    InvalidResultError,
    InvalidTransitionError,
    Objective,
    Range,
    ReportConflictError,
    Strategy,
    StudyError,
    StudyNotFoundError,
    StudyStatus,
    TaskFailedError,
    TaskState,
    TrialNotFoundError,
    TrialStatus,
    UnknownHandlerError,
    ValidationError,
)
from tests.conftest import Cluster, make_cluster
from workers.objectives import BRANIN_MIN, BRANIN_SPACE

STUDY_QUEUES = ("default", "bo", "evaluate")


@pytest.fixture(scope="module")
def study_cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=2, concurrency=2, queues=STUDY_QUEUES)
    yield c
    c.close()


@pytest.fixture
def bq(study_cluster: Cluster) -> BOQueue:
    return study_cluster.producer()


SPACE = [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)]
LOSS = [Objective("loss", minimize=True)]


def sobol_only(max_trials: int, **kw: object) -> Strategy:
    """All trials quasi-random: fast, for tests about bookkeeping rather than the model."""
    return Strategy(initial_trials=max_trials, max_trials=max_trials, seed=0, **kw)  # type: ignore[arg-type]


@pytest.mark.timeout(600)
def test_closed_loop_branin_reaches_low_regret(bq: BOQueue) -> None:
    study = bq.studies.create(
        name="branin", parameters=[Range(n, lo, hi) for n, (lo, hi) in BRANIN_SPACE.items()],
        objectives=[Objective("branin")], evaluator="bench.branin",
        strategy=Strategy(initial_trials=5, max_trials=20, parallelism=1, seed=0),
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=400)
    assert done.status is StudyStatus.COMPLETED, done.message
    assert done.completed_trials == 20 and done.failed_trials == 0
    best = bq.studies.best(study.id)
    assert best is not None
    regret = float(best.values["branin"]) - BRANIN_MIN  # type: ignore[index,arg-type]
    assert regret < 0.1, f"regret {regret:.3f}"
    generators = {t.generator for t in bq.studies.trials(study.id)}
    assert "MBM" in generators  # the model, not only quasi-random points, made trials


@pytest.mark.timeout(600)
def test_ask_tell_from_four_threads_records_every_trial_once(bq: BOQueue) -> None:
    study = bq.studies.create(name="asktell", parameters=SPACE, objectives=LOSS,
                              strategy=sobol_only(16))
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for _ in range(4):
                for trial in bq.studies.suggest(study.id, count=1, timeout=120):
                    loss = (trial.params["x"] - 0.3) ** 2  # type: ignore[operator]
                    assert bq.studies.report(study.id, trial.index, {"loss": loss}) is True
                    assert bq.studies.report(study.id, trial.index, {"loss": loss}) is False
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    done = bq.studies.wait(study.id, timeout=120)
    trials = bq.studies.trials(study.id)
    assert done.status is StudyStatus.COMPLETED and done.completed_trials == 16
    assert sorted(t.index for t in trials) == list(range(16))
    assert all(t.status is TrialStatus.COMPLETED for t in trials)


def test_reports_are_validated_and_written_once(bq: BOQueue) -> None:
    study = bq.studies.create(name="validate", parameters=SPACE, objectives=LOSS,
                              strategy=sobol_only(5))
    [trial] = bq.studies.suggest(study.id, timeout=120)
    with pytest.raises(InvalidResultError, match="expected values for"):
        bq.studies.report(study.id, trial.index, {"accuracy": 0.3})
    with pytest.raises(InvalidResultError, match="finite"):
        bq.studies.report(study.id, trial.index, {"loss": float("nan")})
    with pytest.raises(InvalidResultError, match="finite"):
        bq.studies.report(study.id, trial.index, {"loss": float("inf")})
    with pytest.raises(TrialNotFoundError):
        bq.studies.report(study.id, 999, {"loss": 1.0})
    with pytest.raises(StudyNotFoundError):
        bq.studies.report("no-such-study", 0, {"loss": 1.0})
    assert bq.studies.report(study.id, trial.index, {"loss": [0.5, 0.01]}) is True
    with pytest.raises(ReportConflictError):
        bq.studies.report(study.id, trial.index, {"loss": 0.7})
    with pytest.raises(ValidationError, match="outside"):
        bq.studies.add_design_points(study.id, [{"x": 2.0, "y": 0.1}])
    with pytest.raises(ValidationError, match="missing"):
        bq.studies.add_design_points(study.id, [{"x": 0.2}])
    [design] = bq.studies.add_design_points(study.id, [{"x": 0.3, "y": 0.3}])
    assert design.generator == "manual" and design.params == {"x": 0.3, "y": 0.3}
    bq.studies.report(study.id, design.index, {"loss": 0.0})
    wait_for_completed(bq, study.id, 2)
    best = bq.studies.best(study.id)
    assert best is not None and best.index == design.index
    assert bq.studies.trial(study.id, trial.index).values == {"loss": (0.5, 0.01)}


def wait_for_completed(bq: BOQueue, study_id: str, count: int) -> None:
    from bo_queue.testing import wait_until

    wait_until(lambda: bq.studies.get(study_id).completed_trials >= count, 60,
               what=f"{count} completed trials")


@pytest.mark.timeout(600)
def test_failing_evaluations_fail_their_trials_and_the_study_goes_on(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    study = bq.studies.create(
        name="flaky", parameters=SPACE, objectives=LOSS, evaluator="t.quadratic",
        strategy=sobol_only(6, parallelism=2), evaluator_options={"fail": [1, 3]},
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=180)
    assert done.status is StudyStatus.COMPLETED and done.completed_trials == 6
    failed = bq.studies.trials(study.id, TrialStatus.FAILED)
    assert sorted(t.index for t in failed) == [1, 3]
    assert all("fails on purpose" in (t.error or "") for t in failed)
    assert len(bq.studies.trials(study.id)) == 8  # two replacements were generated


@pytest.mark.timeout(300)
def test_retried_evaluations_still_report_to_their_study(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    study = bq.studies.create(name="retried", parameters=SPACE, objectives=LOSS,
                              evaluator="t.retried_eval", strategy=sobol_only(3, parallelism=2))
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=180)
    assert done.status is StudyStatus.COMPLETED and done.completed_trials == 3, done.message
    assert done.failed_trials == 0
    runs = evidence.hgetall(f"evidence:evaluations:{study.id}")
    assert runs == {str(i): "2" for i in range(3)}  # each reported after its retry


@pytest.mark.timeout(300)
def test_an_evaluation_killed_by_its_hard_time_limit_fails_its_trial(bq: BOQueue) -> None:
    study = bq.studies.create(
        name="stuck", parameters=SPACE, objectives=LOSS, evaluator="t.stuck_eval",
        strategy=sobol_only(1, max_failed_trials=0, trial_lease_s=600),
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=120)  # long before the lease runs out
    assert done.status is StudyStatus.FAILED and "1 trials failed" in done.message
    [trial] = bq.studies.trials(study.id)
    assert trial.status is TrialStatus.FAILED
    assert "TimeLimitExceeded" in (trial.error or ""), trial.error
    assert trial.worker  # the entry names the worker: the hook saw the task's request


@pytest.mark.timeout(300)
def test_an_ordinary_task_shaped_like_an_evaluation_changes_no_study(bq: BOQueue) -> None:
    from bo_queue.testing import wait_until

    study = bq.studies.create(name="untouched", parameters=SPACE, objectives=LOSS,
                              strategy=sobol_only(2))
    [trial] = bq.studies.suggest(study.id, timeout=120)
    store = bq.studies.store
    before = (bq.studies.trials(study.id), len(store.steps(study.id)),
              bq.studies.get(study.id).iteration)
    payload = {"study_id": study.id, "trial_index": trial.index, "params": trial.params,
               "options": {}}
    ordinary = [bq.submit("t.quadratic", payload), bq.submit("t.quadratic", payload,
                                                             countdown=0.5)]
    failing = bq.submit("t.quadratic", {**payload, "options": {"fail": [trial.index]}})
    for handle in ordinary:
        assert "loss" in handle.get(timeout=60)
    with pytest.raises(TaskFailedError):
        failing.get(timeout=60)
    for handle in [*ordinary, failing]:  # the record ends after any study would have heard
        wait_until(lambda h=handle: bq.records.get(h.id).state.terminal, 30,  # type: ignore[union-attr]
                   what="the ordinary task's record to end")
    time.sleep(2)  # room for a step, had one been asked for
    assert store.inbox(study.id) == []
    assert store.redis.hgetall(store.reported_key(study.id)) == {}
    assert (bq.studies.trials(study.id), len(store.steps(study.id)),
            bq.studies.get(study.id).iteration) == before
    assert bq.studies.trial(study.id, trial.index).status is TrialStatus.RUNNING
    # the study itself goes on as before
    assert bq.studies.report(study.id, trial.index, {"loss": 0.5}) is True


def test_an_evaluator_returning_the_wrong_keys_fails_trials_until_the_budget(bq: BOQueue) -> None:
    study = bq.studies.create(
        name="wrong", parameters=SPACE, objectives=LOSS, evaluator="t.quadratic",
        strategy=sobol_only(4, max_failed_trials=2), evaluator_options={"wrong_keys": True},
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=180)
    assert done.status is StudyStatus.FAILED and "3 trials failed (budget 2)" in done.message
    errors = {t.error for t in bq.studies.trials(study.id, TrialStatus.FAILED)}
    assert errors and all("bad values" in (e or "") and "nope" in (e or "") for e in errors)


def test_bad_studies_are_rejected_at_create(bq: BOQueue) -> None:
    with pytest.raises(UnknownHandlerError, match=r"no\.such\.evaluator"):
        bq.studies.create(name="x", parameters=SPACE, objectives=LOSS,
                          evaluator="no.such.evaluator")
    with pytest.raises(ValidationError, match="duplicate parameter"):
        bq.studies.create(name="x", parameters=[Range("x", 0, 1), Range("x", 1, 2)],
                          objectives=LOSS)
    with pytest.raises(ValidationError, match="at least one objective"):
        bq.studies.create(name="x", parameters=SPACE, objectives=[])
    with pytest.raises(ValidationError, match="has no evaluator"):
        bq.studies.run(bq.studies.create(name="x", parameters=SPACE, objectives=LOSS).id)


def test_lifecycle_allows_only_legal_transitions(bq: BOQueue) -> None:
    study = bq.studies.create(name="life", parameters=SPACE, objectives=LOSS,
                              strategy=sobol_only(3))
    with pytest.raises(InvalidTransitionError, match="CREATED to PAUSED"):
        bq.studies.pause(study.id)
    bq.studies.suggest(study.id, timeout=120)
    assert bq.studies.get(study.id).status is StudyStatus.ACTIVE
    assert bq.studies.pause(study.id).status is StudyStatus.PAUSED
    with pytest.raises(StudyError, match="paused"):
        bq.studies.suggest(study.id, timeout=60)
    assert bq.studies.resume(study.id).status is StudyStatus.ACTIVE
    assert bq.studies.complete(study.id).status is StudyStatus.COMPLETED
    with pytest.raises(InvalidTransitionError, match="COMPLETED to ACTIVE"):
        bq.studies.resume(study.id)
    with pytest.raises(InvalidTransitionError):
        bq.studies.set_strategy(study.id, Strategy())


def test_generation_past_its_time_limit_falls_back_to_sobol(bq: BOQueue) -> None:
    study = bq.studies.create(
        name="timebox", parameters=SPACE, objectives=LOSS, evaluator="t.quadratic",
        strategy=Strategy(initial_trials=2, max_trials=4, seed=1, generation_time_limit_s=0.01),
    )
    bq.studies.run(study.id)
    assert bq.studies.wait(study.id, timeout=180).status is StudyStatus.COMPLETED
    generators = [t.generator for t in bq.studies.trials(study.id)]
    assert "sobol-fallback" in generators[2:], generators


def test_an_expired_lease_fails_the_trial_and_it_is_replaced(bq: BOQueue) -> None:
    study = bq.studies.create(name="lease", parameters=SPACE, objectives=LOSS,
                              strategy=sobol_only(3, trial_lease_s=1.0))
    [forgotten] = bq.studies.suggest(study.id, timeout=120)
    from bo_queue.testing import wait_until

    def swept() -> bool:
        bq.studies.suggest(study.id, timeout=120)  # each step sweeps expired leases
        return bq.studies.trial(study.id, forgotten.index).status is TrialStatus.FAILED

    wait_until(swept, 30, 0.5, "the lease to expire")
    assert "lease" in (bq.studies.trial(study.id, forgotten.index).error or "")
    with pytest.raises(StudyError, match="FAILED"):
        bq.studies.report(study.id, forgotten.index, {"loss": 1.0})


@pytest.mark.timeout(600)
def test_several_studies_run_at_once_without_interfering(bq: BOQueue) -> None:
    studies = [
        bq.studies.create(name=f"iso{i}", parameters=SPACE, objectives=LOSS,
                          evaluator="t.quadratic", strategy=sobol_only(5, parallelism=2))
        for i in range(3)
    ]
    for study in studies:
        bq.studies.run(study.id)
    for study in studies:
        done = bq.studies.wait(study.id, timeout=240)
        assert done.status is StudyStatus.COMPLETED and done.completed_trials == 5
        trials = bq.studies.trials(study.id)
        assert len(trials) == 5 and all(t.task_id for t in trials)
    assert {s.name for s in bq.studies.list(status="COMPLETED")} >= {"iso0", "iso1", "iso2"}


@pytest.mark.timeout(300)
def test_study_command_line(study_cluster: Cluster, tmp_path: Path) -> None:
    spec = {
        "name": "cli", "evaluator": "t.quadratic",
        "parameters": [{"kind": "range", "name": "x", "low": 0, "high": 1},
                       {"kind": "choice", "name": "c", "values": ["a", "b"]}],
        "objectives": [{"name": "loss"}],
        "strategy": {"initial_trials": 4, "max_trials": 4, "seed": 0},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "BO_QUEUE_REDIS_URL": study_cluster.redis_url,
           "BO_QUEUE_NAMESPACE": study_cluster.namespace}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bo_queue.cli", "study", *args],
                              capture_output=True, text=True, timeout=240, env=env)

    created = cli("create", "--spec", str(tmp_path / "spec.json"))
    assert created.returncode == 0, created.stderr
    study_id = created.stdout.strip()
    ran = cli("run", study_id, "--wait", "--timeout", "200")
    assert ran.returncode == 0 and "COMPLETED" in ran.stdout, ran.stderr
    status = cli("status", study_id)
    assert "4/4 completed" in status.stdout
    best = json.loads(cli("best", study_id).stdout)
    assert best["status"] == "COMPLETED" and set(best["params"]) == {"x", "c"}
    assert cli("export", study_id, "--out", str(tmp_path / "out.json")).returncode == 0
    exported = json.loads((tmp_path / "out.json").read_text())
    assert exported["study"]["id"] == study_id and len(exported["trials"]) == 4
    bad = cli("status", "no-such-study")
    assert bad.returncode == 2 and "no study with id 'no-such-study'" in bad.stderr


def test_results_arriving_after_the_end_are_dropped_and_the_step_returns(bq: BOQueue) -> None:
    study = bq.studies.create(name="ended", parameters=SPACE, objectives=LOSS,
                              strategy=sobol_only(3))
    [trial] = bq.studies.suggest(study.id, timeout=120)
    bq.studies.complete(study.id)
    bq.studies.store.push_result(study.id, {"index": trial.index, "values": {"loss": 1.0}})
    assert bq.submit("bo_queue.study.step", {"study_id": study.id}, queue="bo").get(
        timeout=30) == []
    assert bq.studies.store.inbox_size(study.id) == 0
    with pytest.raises(InvalidTransitionError, match="takes no more results"):
        bq.studies.report(study.id, trial.index, {"loss": 1.0})


@pytest.mark.timeout(300)
def test_a_suggest_right_after_a_report_tells_it_in_its_own_step(
    bq: BOQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ask/tell report's step waits (TELL_AFTER_S) so that the suggest() sent right
    after it tells Ax the result in its own step, instead of waiting for the study's lock
    behind a step that only tells; that step then finds the result told and does nothing.
    A report that no suggest follows is told by its own step."""
    from bo_queue.studies import manager
    from bo_queue.testing import wait_until

    monkeypatch.setattr(manager, "TELL_AFTER_S", 3.0)  # the suggest's step surely comes first
    study = bq.studies.create(name="tell-after", parameters=SPACE, objectives=LOSS,
                              strategy=sobol_only(2))
    earlier = {t.id for t in bq.tasks(handler=manager.STEP, limit=100_000)}  # other tests'
    [first] = bq.studies.suggest(study.id, timeout=120)
    assert bq.studies.report(study.id, first.index, {"loss": 0.5}) is True
    [second] = bq.studies.suggest(study.id, timeout=120)
    answered = bq.studies.step_timings(study.id)
    assert [(s["made"], s["told"]) for s in answered] == [(1, 0), (1, 1)]

    def told_steps() -> list[Any]:
        return [t for t in bq.tasks(handler=manager.STEP, limit=100_000)
                if t.due_at is not None and t.id not in earlier]

    wait_until(lambda: len(told_steps()) == 1 and told_steps()[0].state is TaskState.SUCCEEDED, 30,
               what="the first report's step")
    assert bq.handle(told_steps()[0].id).get(timeout=5) == []  # nothing left to tell
    assert bq.studies.step_timings(study.id) == answered  # it took no step

    assert bq.studies.report(study.id, second.index, {"loss": 0.25}) is True
    done = bq.studies.wait(study.id, timeout=60)
    assert done.status is StudyStatus.COMPLETED and done.completed_trials == 2
    assert [(s["made"], s["told"]) for s in bq.studies.step_timings(study.id)[2:]] == [(0, 1)]
    assert bq.studies.trial(study.id, second.index).status is TrialStatus.COMPLETED
