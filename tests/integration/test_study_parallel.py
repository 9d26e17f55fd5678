"""Parallel studies: a freed evaluation slot is refilled at once with a trial generated
after the results before it, and the step's log (trial records, snapshot now and then)
loses and duplicates no trial under four producers and a `kill -9` of a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from bo_queue import (
    BOQueue,
    InvalidTransitionError,
    Objective,
    Range,
    Strategy,
    StudyError,
    StudyStatus,
    TrialStatus,
)
from bo_queue.testing import wait_until
from tests.conftest import ROOT, Cluster, new_namespace

SPACE = [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)]
QUEUES = ("default", "bo", "evaluate")
# Generous for a loaded 2-core machine; a slot refilled by the lease sweep would take 1 h.
REFILL_S = 5.0


@pytest.fixture(scope="module")
def fragile(redis_url: str) -> Iterator[Cluster]:
    """Two workers of two processes each; a lost message is back in about 10 s, and a
    killed step's study lock lapses within 15 s (its lease: worker_outage_s). The kill -9
    test runs last in this file."""
    c = Cluster(redis_url, new_namespace(), {"visibility_timeout_s": "10",
                "hold_delays_over_s": "5", "restore_sweep_s": "1",
                "worker_outage_s": "15"}, queues=QUEUES)
    try:
        workers = [c.add_worker(concurrency=2, start=False) for _ in range(2)]
        for worker in workers:
            worker.start(wait=0)
        for worker in workers:
            worker.wait_ready(180)  # importing Ax takes a while on a loaded machine
        yield c
    finally:
        c.close()


# In a process of its own: Ax and torch must not load into the test process.
REPLAY = """
import json, sys
from bo_queue import BOQueue
from bo_queue.studies import ax_adapter
from bo_queue.studies.engine import Engine

url, namespace, study_id = sys.argv[1:]
state = BOQueue(redis_url=url, namespace=namespace).studies.store.load(study_id)
engine = Engine.load(state.study.spec, state.model)
engine.catch_up(state.trials, state.curves)
trials = ax_adapter.experiment(engine.client).trials
print(json.dumps({"trials": sorted(trials),
                  "completed": sorted(i for i, t in trials.items() if t.status.is_completed)}))
"""


def _started(bq: BOQueue, task_ids: list[str]) -> list[float]:
    starts = [bq.info(t).started_at for t in task_ids]
    return sorted(s.timestamp() for s in starts if s is not None)


@pytest.mark.timeout(360)
def test_a_freed_slot_is_refilled_at_once_by_a_trial_of_its_own(fragile: Cluster) -> None:
    bq = fragile.producer()
    study = bq.studies.create(
        name="refill", parameters=SPACE, objectives=[Objective("loss")],
        evaluator="t.quadratic", evaluator_options={"sleep_s": 1.5},
        strategy=Strategy(initial_trials=6, max_trials=6, parallelism=2, seed=1),
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=150, poll_s=0.1)
    assert done.status is StudyStatus.COMPLETED, done.message
    trials = bq.studies.trials(study.id)
    assert len(trials) == 6 and all(t.status is TrialStatus.COMPLETED for t in trials)
    # One generation per trial, the results reported before it told first: no two
    # trials of a closed loop come from the same Ax call (the same step iteration).
    assert len({t.batch for t in trials}) == 6
    starts = _started(bq, [str(t.task_id) for t in trials])
    freed = sorted(t.reported_at.timestamp() for t in trials if t.reported_at)
    assert len(starts) == len(freed) == 6
    # The k-th evaluation after the first two fills the slot the k-th result freed.
    waits = [start - free for start, free in zip(starts[2:], freed, strict=False)]
    assert all(w < REFILL_S for w in waits), waits
    # and the two slots ran side by side: the second evaluation started before the first
    # result came back
    assert starts[1] < freed[0]


# The trials one engine draws in a row for the same spec, in a process of its own.
DRAWS = """
import json, sys
from bo_queue import BOQueue
from bo_queue.studies.engine import Engine

url, namespace, study_id, count = sys.argv[1:]
spec = BOQueue(redis_url=url, namespace=namespace).studies.get(study_id).spec
engine = Engine.create(spec)
print(json.dumps([engine.generate(1, time_limit_s=60, fallback_seed=1)[0][1]
                  for _ in range(int(count))]))
"""


@pytest.mark.timeout(300)
def test_steps_on_processes_whose_engine_is_behind_draw_what_one_engine_draws(
    fragile: Cluster,
) -> None:
    """Ask/tell steps land on any of the four worker processes. One whose engine in memory
    is some iterations behind replays the trial records onto it (no snapshot decoded):
    the trials are exactly those one engine draws in a row (Sobol: deterministic)."""
    bq = fragile.producer()
    count = 10
    study = bq.studies.create(
        name="caught-up", parameters=SPACE, objectives=[Objective("loss")],
        strategy=Strategy(initial_trials=count, max_trials=count, seed=7),
    )
    suggested = []
    for _ in range(count):
        (trial,) = bq.studies.suggest(study.id)
        suggested.append(trial.params)
        bq.studies.report(study.id, trial.index, {"loss": float(trial.params["x"])})
    bq.studies.wait(study.id, timeout=120, poll_s=0.1)
    steps = bq.studies.step_timings(study.id)
    assert any(step["caught_up"] for step in steps), steps
    drawn = subprocess.run(
        [sys.executable, "-c", DRAWS, fragile.redis_url, fragile.namespace, study.id,
         str(count)], capture_output=True, text=True, check=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert suggested == json.loads(drawn.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(240)
def test_four_producers_and_a_kill_9_lose_and_duplicate_no_trial(fragile: Cluster) -> None:
    bq = fragile.producer()
    max_trials = 20
    study = bq.studies.create(
        name="crowd", parameters=SPACE, objectives=[Objective("loss")],
        evaluator="t.quadratic", evaluator_options={"sleep_s": 0.3},
        # Quasi-random only (the bookkeeping is under test, not the model); a trial whose
        # step died with its worker after saving it is failed by its lease and replaced.
        # A step killed while it holds the study's lock stops renewing it: the lock lapses
        # within its lease, worker_outage_s (workers/study_lock.py), whatever the time box.
        strategy=Strategy(initial_trials=max_trials, max_trials=max_trials, parallelism=2,
                          seed=5, trial_lease_s=20),
    )
    bq.studies.run(study.id)  # the closed loop, and four ask/tell producers beside it
    handed: list[int] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def producer() -> None:
        try:
            while not bq.studies.get(study.id).status.terminal:
                try:
                    # longer than a killed step's lock may hold the study, with room
                    got = bq.studies.suggest(study.id, timeout=120)
                    for trial in got:
                        with guard:
                            handed.append(trial.index)
                        loss = sum((float(v) - 0.3) ** 2 for v in trial.params.values())
                        bq.studies.report(study.id, trial.index, {"loss": loss})
                except (InvalidTransitionError, StudyError):
                    continue  # the study ended meanwhile, or the trial's lease ran out
                if not got:
                    time.sleep(0.1)  # no room until a running trial ends
        except BaseException as exc:  # the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: bq.studies.get(study.id).completed_trials >= 5, 90,
               what="five completed trials")
    fragile.workers[0].kill()  # SIGKILL mid-run: a step or an evaluation dies with it

    def ended() -> bool:
        bq.submit("bo_queue.maintenance.sweep_studies", {})  # what beat does every minute
        return bq.studies.get(study.id).status.terminal

    wait_until(ended, 180, 1.0, what="the study to end")
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    done = bq.studies.get(study.id)
    assert done.status is StudyStatus.COMPLETED, done.message
    trials = bq.studies.trials(study.id)
    indices = [t.index for t in trials]
    assert indices == list(range(len(trials)))  # none lost: the indices have no gap
    assert not [i for i, n in Counter(handed).items() if n > 1]  # none handed out twice
    points = Counter(tuple(sorted(t.params.items())) for t in trials)
    assert max(points.values()) == 1  # none generated twice
    statuses = Counter(t.status for t in trials)
    assert statuses[TrialStatus.COMPLETED] == max_trials == done.completed_trials
    # Only a trial whose step died with the worker after saving it fails, by its lease
    # (at most one per producer's suggest() in flight and one per process of the killed
    # worker), and trials cut off by the end stay RUNNING: nothing else.
    assert set(statuses) <= {TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.RUNNING}
    failed = [t for t in trials if t.status is TrialStatus.FAILED]
    assert all("lease" in str(t.error) for t in failed), [t.error for t in failed]
    assert len(failed) <= 4 + 2, statuses

    # The last snapshot and the records replayed onto it give Ax exactly the records.
    replayed = subprocess.run(
        [sys.executable, "-c", REPLAY, fragile.redis_url, fragile.namespace, study.id],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    ax = json.loads(replayed.stdout.strip().splitlines()[-1])
    assert ax["trials"] == indices
    assert ax["completed"] == [t.index for t in trials if t.status is TrialStatus.COMPLETED]
