"""Studies survive lost workers and lost Redis state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from bo_queue import BOQueue, FileStorage, Objective, Range, Strategy, StudyStatus, TrialStatus
from bo_queue.core.message import envelope_task_id
from bo_queue.errors import StudyTimeoutError
from bo_queue.testing import wait_until
from tests.conftest import ROOT, Cluster, make_cluster

SPACE = [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)]


@pytest.fixture
def fragile(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=2, concurrency=1, queues=("default", "bo", "evaluate"),
                     visibility_timeout_s="10", hold_delays_over_s="5", restore_sweep_s="1")
    yield c
    c.close()


@pytest.mark.timeout(300)
def test_kill_9_of_a_worker_during_a_closed_loop(fragile: Cluster, evidence: redis.Redis) -> None:
    bq = fragile.producer()
    study = bq.studies.create(
        name="survivor", parameters=SPACE, objectives=[Objective("loss")],
        evaluator="t.quadratic", evaluator_options={"sleep_s": 1.0},
        strategy=Strategy(initial_trials=3, max_trials=8, parallelism=2, seed=3,
                          generation_time_limit_s=5, trial_lease_s=30),
    )
    bq.studies.run(study.id)
    wait_until(lambda: bq.studies.get(study.id).completed_trials >= 2, 120,
               what="two completed trials")
    fragile.workers[0].kill()  # SIGKILL mid-run: an evaluation or a step is lost with it

    def ended() -> bool:
        # What beat does every minute in a deployment: a killed worker can take an
        # evaluation's message with it before it was sent; the trial's lease runs out
        # and the sweep has the study fail and replace it.
        bq.submit("bo_queue.maintenance.sweep_studies", {})
        return bq.studies.get(study.id).status.terminal

    wait_until(ended, 240, 2.0, what="the study to end")
    done = bq.studies.get(study.id)
    assert done.status is StudyStatus.COMPLETED, done.message
    completed = bq.studies.trials(study.id, TrialStatus.COMPLETED)
    assert len(completed) == 8 == done.completed_trials
    assert len({t.index for t in completed}) == 8


@pytest.mark.timeout(300)
def test_file_backend_round_trip_in_a_fresh_process(
    fragile: Cluster, tmp_path: Path
) -> None:
    bq = fragile.producer()
    study = bq.studies.create(name="filed", parameters=SPACE, objectives=[Objective("loss")],
                              strategy=Strategy(initial_trials=2, max_trials=5, seed=5))
    for trial in bq.studies.suggest(study.id, count=3, timeout=120):
        bq.studies.report(study.id, trial.index, {"loss": float(trial.params["x"])})  # type: ignore[arg-type]
    wait_until(lambda: bq.studies.get(study.id).completed_trials == 3, 60, what="3 results")
    bq.studies.persist(study.id, FileStorage(tmp_path))
    assert (tmp_path / study.id / "models" / "latest.json.gz").exists()
    before = [t.model_dump(mode="json") for t in bq.studies.trials(study.id)]
    assert bq.studies.delete(study.id)  # the Redis copy is gone

    script = (
        "import json, sys\n"
        "from bo_queue import BOQueue, FileStorage\n"
        f"bq = BOQueue(redis_url={fragile.redis_url!r}, namespace={fragile.namespace!r})\n"
        f"study = bq.studies.load({study.id!r}, FileStorage({str(tmp_path)!r}))\n"
        "print(json.dumps([study.status, study.completed_trials, study.iteration]))\n"
        "print(json.dumps([t.model_dump(mode='json') for t in bq.studies.trials(study.id)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    status_line, trials_line = out.stdout.strip().splitlines()[-2:]
    assert json.loads(status_line)[:2] == ["ACTIVE", 3]
    assert json.loads(trials_line) == before

    # and the study goes on where it stopped: the model knows the first three results
    for trial in bq.studies.suggest(study.id, count=2, timeout=120):
        assert trial.index in (3, 4)
        bq.studies.report(study.id, trial.index, {"loss": float(trial.params["x"])})  # type: ignore[arg-type]
    done = bq.studies.wait(study.id, timeout=60)
    assert done.status is StudyStatus.COMPLETED and done.completed_trials == 5


@pytest.mark.timeout(300)
def test_a_study_resumes_after_every_worker_restarts(fragile: Cluster) -> None:
    bq = fragile.producer()
    study = bq.studies.create(
        name="restarts", parameters=SPACE, objectives=[Objective("loss")],
        evaluator="t.quadratic", evaluator_options={"sleep_s": 0.5},
        strategy=Strategy(initial_trials=3, max_trials=7, parallelism=2, seed=4,
                          generation_time_limit_s=5),
    )
    bq.studies.run(study.id)
    wait_until(lambda: bq.studies.get(study.id).completed_trials >= 2, 120,
               what="two completed trials")
    with ThreadPoolExecutor() as pool:  # all at once: one left running would finish the study
        # warm shutdown: what is running finishes, what is queued waits for new workers
        list(pool.map(lambda worker: worker.stop(), list(fragile.workers)))
    assert not bq.studies.get(study.id).status.terminal
    fragile.add_worker(concurrency=1, name=f"{fragile.namespace}-new1")
    fragile.add_worker(concurrency=1, name=f"{fragile.namespace}-new2")
    try:
        done = bq.studies.wait(study.id, timeout=240)
    except StudyTimeoutError as exc:  # rare (1 fresh clone in ~40 runs): say where it stalled
        raise AssertionError(f"{exc}\n{study_whereabouts(bq, study.id)}") from None
    assert done.status is StudyStatus.COMPLETED and done.completed_trials == 7


def study_whereabouts(bq: BOQueue, study_id: str) -> str:
    """For a failure message: each trial with its evaluation's record and message, the
    study's lock, pending flag and inbox, its last steps, and every step task's state."""
    store = bq.studies.store
    prefix = bq.keys.broker_prefix
    lists = [prefix + q + (f":{p}" if p else "") for q in ("bo", "evaluate") for p in range(10)]
    found: dict[str, str] = {}
    for key in lists:
        for raw in bq.redis.lrange(key, 0, -1):
            found[str(envelope_task_id(str(raw)))] = key
    for raw in bq.redis.hvals(prefix + "unacked"):
        found[str(envelope_task_id(str(raw)))] = "unacked"
    held, outbox = set(bq.redis.hkeys(bq.keys.delayed_specs)), set(bq.redis.hkeys(bq.keys.outbox))

    def where(task_id: str | None) -> str:
        if task_id is None:
            return "-"
        places = [found.get(task_id, ""), "held" if task_id in held else "",
                  "outbox" if task_id in outbox else ""]
        return f"{bq.records.state(task_id)} @ {'+'.join(p for p in places if p) or 'nowhere'}"

    lines = [f"trial {t.index}: {t.status} task {t.task_id} {where(t.task_id)}"
             for t in bq.studies.trials(study_id)]
    lock = store.lock_key(study_id)
    lines.append(f"lock held: {bool(bq.redis.exists(lock))}, pending: "
                 f"{bq.redis.get(lock + ':pending')!r}, inbox: {store.inbox_size(study_id)}")
    lines += [f"step: {s}" for s in store.steps(study_id)[-8:]]
    lines += [f"step task {t.id}: {where(t.id)}"
              for t in bq.tasks(handler="bo_queue.study.step", limit=50)]
    return "\n".join(lines)
