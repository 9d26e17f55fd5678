"""Early stopping on real workers and a real Redis: evaluators that report curves in a
closed loop, ask/tell producers, and what Ax is told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from bo_queue import (
    BOQueue,
    EarlyStopping,
    Objective,
    Range,
    ReportConflictError,
    Strategy,
    StudyStatus,
    TaskState,
    TrialStatus,
    ValidationError,
)
from bo_queue.testing import wait_until
from tests.conftest import HANDLERS, STUDY_QUEUES, Cluster
from tests.integration.api_server import api_client
from tests.integration.curve_handlers import STOPPED_RESULT

ROOT = Path(__file__).resolve().parents[2]
STEPS = 5
# loss = x + 1/(step + 1): past step 1, a trial with x > 0.7 is above the threshold 1.2
RULES = EarlyStopping(percentile=50, min_progression=1, min_curves=2, threshold=1.2)


# tests/conftest.py's `cluster`: two workers of concurrency 2 that serve studies
CLUSTER = {"queues": STUDY_QUEUES, "imports": (HANDLERS, "tests.integration.curve_handlers")}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("via", ["ctx", "bq"])
def test_closed_loop_stops_bad_trials_as_their_curves_arrive(
    bq: BOQueue, evidence: redis.Redis, via: str
) -> None:
    study = bq.studies.create(
        "curves", [Range("x", 0.0, 1.0)], [Objective("loss")], evaluator="es.curve",
        strategy=Strategy(initial_trials=6, max_trials=6, parallelism=2, seed=0,
                          early_stopping=RULES),
        evaluator_options={"steps": STEPS, "sleep_s": 0.05, "via": via},
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=240)
    assert done.status is StudyStatus.COMPLETED, done.message
    trials = bq.studies.trials(study.id)
    stopped = [t for t in trials if t.status is TrialStatus.EARLY_STOPPED]
    completed = [t for t in trials if t.status is TrialStatus.COMPLETED]
    assert len(stopped) + len(completed) == 6 == len(trials)  # both count to max_trials
    assert done.early_stopped_trials == len(stopped) and done.completed_trials == len(completed)
    assert [t for t in trials if float(t.params["x"]) > 0.7] != []  # the threshold bites
    told = evidence.hgetall(f"evidence:curves:{study.id}")
    for trial in trials:
        curve = bq.studies.intermediate(study.id, trial.index)
        assert [step for step, _ in curve] == list(range(len(curve)))
        assert trial.values == curve[-1][1]  # its last intermediate values, whatever it returned
        if float(trial.params["x"]) > 0.7:
            assert trial.status is TrialStatus.EARLY_STOPPED
        if trial.status is TrialStatus.EARLY_STOPPED:
            assert trial.values != {"loss": STOPPED_RESULT}  # (it may stop at its last step)
            assert told[str(trial.index)] == f"{curve[-1][0]} True"  # ctx.cancelled was true
            assert trial.task_id is not None
            wait_until(lambda t=trial.task_id: bq.info(t).state is TaskState.CANCELLED, 30,
                       what="the stopped evaluation's task to end CANCELLED")
        else:
            assert len(curve) == STEPS and str(trial.index) not in told
    assert stopped != [] and set(told) == {str(t.index) for t in stopped}
    check_ax_sees_the_curves(bq, study.id)


# In a process of its own: Ax and torch stay out of the test process.
AX_VIEW = """
import json, sys
from bo_queue import BOQueue
from bo_queue.studies import ax_adapter
from bo_queue.studies.engine import Engine

bq = BOQueue(redis_url=sys.argv[1], namespace=sys.argv[2])
state = bq.studies.store.load(sys.argv[3])
engine = Engine.load(state.study.spec, state.model)  # as a step does
engine.catch_up(state.trials, state.curves)
experiment = ax_adapter.experiment(engine.client)
frame = experiment.lookup_data().full_df.sort_values("step")
print(json.dumps({
    str(index): {
        "status": trial.status.name,
        "curve": [[int(r.step), r.mean] for r in frame[frame.trial_index == index].itertuples()],
    }
    for index, trial in experiment.trials.items()
}))
"""


def check_ax_sees_the_curves(bq: BOQueue, study_id: str) -> None:
    """The Ax experiment a step builds from the stored model holds the curves as
    progressions and the stopped trials as EARLY_STOPPED."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", AX_VIEW, bq.settings.redis_url, bq.keys.namespace, study_id],
        capture_output=True, text=True, timeout=240, env=env, check=True,
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    trials = bq.studies.trials(study_id)
    assert set(seen) == {str(t.index) for t in trials}
    for trial in trials:
        assert seen[str(trial.index)]["status"] == trial.status.value
        curve = bq.studies.intermediate(study_id, trial.index)
        # (Ax's JSON snapshot keeps values to about 9 digits)
        assert seen[str(trial.index)]["curve"] == [[s, pytest.approx(v["loss"], rel=1e-8)]
                                                   for s, v in curve]


@pytest.mark.timeout(300)
def test_ask_tell_reports_curves_and_stopped_trials_count(bq: BOQueue) -> None:
    rules = EarlyStopping(percentile=None, threshold=0.5, min_progression=1)
    study = bq.studies.create("asktell-curves", [Range("x", 0.0, 1.0)], [Objective("loss")],
                              strategy=Strategy(initial_trials=3, max_trials=3, seed=1,
                                                early_stopping=rules))
    good, bad = bq.studies.suggest(study.id, count=2, timeout=120)
    report = bq.studies.report_intermediate
    assert report(study.id, good.index, 0, {"loss": 0.9}) is False  # before min_progression
    assert report(study.id, good.index, 1, {"loss": 0.4}) is False
    assert report(study.id, bad.index, 0, {"loss": 0.9}) is False
    assert report(study.id, bad.index, 1, {"loss": 0.8}) is True
    assert report(study.id, bad.index, 1, {"loss": 0.8}) is True  # the same report again
    wait_until(lambda: bq.studies.trial(study.id, bad.index).status is TrialStatus.EARLY_STOPPED,
               60, what="the step to record the stopped trial")
    assert bq.studies.trial(study.id, bad.index).values == {"loss": 0.8}
    assert bq.studies.get(study.id).early_stopped_trials == 1
    with pytest.raises(ValidationError, match="has ended"):
        report(study.id, bad.index, 2, {"loss": 0.1})
    with pytest.raises(ReportConflictError):  # a final result cannot replace the stop
        bq.studies.report(study.id, bad.index, {"loss": 0.1})

    # bad input on a running trial: ValidationErrors that write nothing
    for step, values in [(0, {"loss": 0.4}), (1, {"loss": 0.5}), (2, {"acc": 0.1}),
                         (2, {"loss": float("nan")}), ("2", {"loss": 0.1})]:
        with pytest.raises(ValidationError):
            report(study.id, good.index, step, values)  # type: ignore[arg-type]
    assert bq.studies.intermediate(study.id, good.index) == [(0, {"loss": 0.9}),
                                                              (1, {"loss": 0.4})]
    assert bq.studies.report(study.id, good.index, {"loss": 0.3}) is True
    wait_until(lambda: bq.studies.trial(study.id, good.index).status is TrialStatus.COMPLETED,
               60, what="the good trial's result")
    with pytest.raises(ValidationError, match=r"has ended \(COMPLETED\)"):
        report(study.id, good.index, 2, {"loss": 0.2})

    [last] = bq.studies.suggest(study.id, count=1, timeout=120)  # room for one more: 3 in all
    assert bq.studies.suggest(study.id, count=1, timeout=120) == []
    bq.studies.report(study.id, last.index, {"loss": 0.2})
    done = bq.studies.wait(study.id, timeout=60)
    assert done.status is StudyStatus.COMPLETED
    assert (done.completed_trials, done.early_stopped_trials) == (2, 1)
    assert done.message == "3 trials completed (1 of them early stopped)"


@pytest.mark.timeout(300)
def test_http_reports_intermediate_values_and_reads_the_curve(
    bq: BOQueue, cluster: Cluster
) -> None:
    rules = EarlyStopping(percentile=None, threshold=0.5, min_progression=1)
    study = bq.studies.create("http-curves", [Range("x", 0.0, 1.0)], [Objective("loss")],
                              strategy=Strategy(initial_trials=2, max_trials=2, seed=2,
                                                early_stopping=rules))
    [trial] = bq.studies.suggest(study.id, count=1, timeout=120)
    with api_client(cluster.redis_url, cluster.namespace, "curves") as http:
        url = f"/studies/{study.id}/trials/{trial.index}/intermediate"
        first = http.post(url, json={"step": 0, "values": {"loss": 0.9}})
        assert first.status_code == 200 and first.json() == {"stop": False}
        for body in ({"step": 1, "values": {"loss": 0.7}}, {"step": 1, "values": {"loss": 0.7}}):
            answer = http.post(url, json=body)
            assert answer.status_code == 200 and answer.json() == {"stop": True}
        for bad in ({"step": 0, "values": {"loss": 0.1}}, {"step": -1, "values": {"loss": 0.1}},
                    {"step": 2, "values": {"acc": 0.1}}, {"step": 2, "value": {"loss": 0.1}}):
            assert http.post(url, json=bad).status_code == 422, bad
        missing = http.post(f"/studies/{study.id}/trials/99/intermediate",
                            json={"step": 0, "values": {"loss": 0.1}})
        assert missing.status_code == 404
        curve = http.get(url)
        assert curve.status_code == 200
        assert curve.json() == [{"step": 0, "values": {"loss": 0.9}},
                                {"step": 1, "values": {"loss": 0.7}}]
        wait_until(lambda: http.get(f"/studies/{study.id}").json()["early_stopped_trials"] == 1,
                   60, what="the study to count the stopped trial")
        stopped = http.get(f"/studies/{study.id}/trials/{trial.index}").json()
        assert stopped["status"] == "EARLY_STOPPED" and stopped["values"] == {"loss": 0.7}


@pytest.mark.timeout(300)
def test_concurrent_reporters_are_decided_one_at_a_time(bq: BOQueue) -> None:
    """Six threads report six curves at once. With min_curves=6 only the sixth report at
    a step can be decided, so at most one trial ever stops (after it, no step reaches six
    curves): two reporters that both counted six at one step would break that."""
    rules = EarlyStopping(percentile=50, min_progression=0, min_curves=6)
    study = bq.studies.create("racing-curves", [Range("x", 0.0, 1.0)], [Objective("loss")],
                              strategy=Strategy(initial_trials=6, max_trials=6, seed=3,
                                                early_stopping=rules))
    trials = bq.studies.suggest(study.id, count=6, timeout=120)
    decisions: dict[int, list[bool]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(trials))

    def reporter(index: int) -> None:
        try:
            start.wait()
            mine = decisions.setdefault(index, [])
            for step in range(10):
                mine.append(bq.studies.report_intermediate(study.id, index, step,
                                                           {"loss": index / 10}))
                if mine[-1]:
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reporter, args=(t.index,)) for t in trials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    stopped = [index for index, mine in decisions.items() if mine[-1]]
    assert len(stopped) <= 1, decisions
    losses = sorted(t.index / 10 for t in trials)
    for index, mine in decisions.items():
        curve = bq.studies.intermediate(study.id, index)
        assert curve == [(step, {"loss": index / 10}) for step in range(len(mine))]
        if index in stopped:  # worse than the median of all six at its step
            assert index / 10 > (losses[2] + losses[3]) / 2
        else:
            assert len(mine) == 10 and not any(mine)
