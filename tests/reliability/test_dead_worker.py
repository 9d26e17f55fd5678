"""A dead worker's running tasks come back in seconds, with default settings (visibility
timeout 1 h, heartbeat timeout 10 s): a live worker puts back the unacknowledged messages
of a worker whose heartbeat went silent (bo_queue.core.heartbeats), and never those of a
live one, however busy.

The first test runs with every default (issue 17); the others keep the 1 h visibility
timeout and trial lease but shorten the heartbeat timeout to QUICK_HEARTBEAT_S, which
scales their tasks and waits down (their claims hold for any timeout)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from bo_queue import Objective, Range, Strategy, StudyStatus, TaskState, TrialStatus
from bo_queue.config import Settings
from bo_queue.testing import WorkerProcess, wait_until
from tests.conftest import ROOT, Cluster
from tests.reliability import report
from tests.reliability.cluster import HANDLERS, effects_of
from tests.reliability.proxy import PartitionProxy

DEFAULTS = Settings.model_fields
VISIBILITY_S = float(DEFAULTS["visibility_timeout_s"].default)  # 3600: kombu's sweep never helps
HEARTBEAT_S = float(DEFAULTS["heartbeat_timeout_s"].default)  # 10
WINDOW_S = HEARTBEAT_S + 10  # the target: kill to rerun
QUICK_HEARTBEAT_S = 4.0
QUICK = {"heartbeat_timeout_s": str(QUICK_HEARTBEAT_S)}
QUICK_WINDOW_S = QUICK_HEARTBEAT_S + 10
PUT_BACK = "message(s) of dead workers on their queues"


def default_cluster(redis_url: str, workers: int, queues: tuple[str, ...] = ("default",),
                    settings: dict[str, str] | None = None) -> Cluster:
    """Workers with bo_queue's default settings (no FAST_RECOVERY), but for `settings`."""
    cluster = Cluster(redis_url, f"dead{time.time_ns() % 16**8:08x}", settings or {},
                      queues=queues, env={"RELIABILITY_EVIDENCE_URL": redis_url})
    cluster.start_workers(*({"concurrency": 1, "imports": HANDLERS} for _ in range(workers)))
    return cluster


def worker_of(cluster: Cluster, hostname: str | None) -> WorkerProcess:
    return next(w for w in cluster.workers if w.hostname == hostname)


@contextmanager
def cpu_burners(n: int = 2) -> Iterator[None]:
    """A loaded machine: `n` processes spinning, one per core."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


@pytest.mark.timeout(180)
def test_a_killed_workers_task_runs_again_within_seconds(
    redis_url: str, evidence: redis.Redis
) -> None:
    cluster = default_cluster(redis_url, workers=2)
    try:
        bq = cluster.producer()
        assert bq.settings.visibility_timeout_s == VISIBILITY_S == 3600
        task = bq.submit("r.effect", {"i": 7, "ms": 3000})
        wait_until(lambda: effects_of(evidence, cluster.namespace)[2] == 1, 30,
                   what="the handler to run")  # mid-task: its record says RUNNING
        victim = worker_of(cluster, bq.info(task.id).worker)
        victim.kill()  # SIGKILL to its main process and pool: a host lost
        killed_at = time.time()
        wait_until(lambda: bq.info(task.id).attempts == 2, WINDOW_S, 0.1,
                   what=f"the task to run again within {WINDOW_S:.0f} s")
        rerun_s = time.time() - killed_at
        assert task.get(timeout=30) == 7
        wait_until(lambda: bq.info(task.id).state is TaskState.SUCCEEDED, 10,
                   what="the record to end")
        info = bq.info(task.id)
        assert info.attempts == 2 and info.lost == 1 and info.worker != victim.hostname
        assert effects_of(evidence, cluster.namespace) == (1, 1, 2)  # run twice, applied once
        rescuer = worker_of(cluster, info.worker)
        assert f"put back 1 {PUT_BACK}: {task.id}" in rescuer.log()
        report.record(
            "Faults", "a worker `kill -9`ed mid-task (main process and pool), default "
            "settings (visibility timeout 1 h, heartbeat timeout 10 s)",
            "another worker put its message back once its heartbeat was silent for the "
            "timeout; the task ran again and SUCCEEDED once",
            tasks=1, tasks_lost=0, kill_to_rerun_s=round(rerun_s, 1),
            visibility_timeout_s=int(VISIBILITY_S),
        )
    finally:
        cluster.close()


@pytest.mark.timeout(180)
def test_a_worker_busy_in_a_long_task_on_a_loaded_machine_is_not_robbed(
    redis_url: str, evidence: redis.Redis
) -> None:
    # 3 heartbeat timeouts of one task, with both cores busy: its main process beats on
    task_s = 3 * QUICK_HEARTBEAT_S
    cluster = default_cluster(redis_url, workers=2, settings=QUICK)
    try:
        bq = cluster.producer()
        with cpu_burners():
            task = bq.submit("r.effect", {"i": 1, "ms": task_s * 1000})
            assert task.get(timeout=task_s + 60) == 1
        wait_until(lambda: bq.info(task.id).state is TaskState.SUCCEEDED, 10,
                   what="the record to end")
        info = bq.info(task.id)
        assert info.attempts == 1 and info.lost == 0
        assert effects_of(evidence, cluster.namespace) == (1, 1, 1)  # run once
        assert not any(PUT_BACK in w.log() for w in cluster.workers)
        report.record(
            "Faults", f"a worker busy in a {task_s:.0f} s task while CPU burners keep both "
            f"cores busy, another worker idle (heartbeat timeout {QUICK_HEARTBEAT_S:.0f} s)",
            "its heartbeat went on (the main process beats, not the task): nothing was put "
            "back, the task ran once", tasks=1, runs=1, task_s=task_s,
        )
    finally:
        cluster.close()


@pytest.mark.timeout(180)
def test_a_worker_in_a_warm_shutdown_keeps_its_long_task(
    redis_url: str, evidence: redis.Redis
) -> None:
    # Its heartbeat stops while the pool finishes the task: its card says "stopping", and
    # the task stays its own (for up to a minute) although it outlasts the heartbeat timeout.
    task_s = 2 * QUICK_HEARTBEAT_S
    cluster = default_cluster(redis_url, workers=2, settings=QUICK)
    try:
        bq = cluster.producer()
        task = bq.submit("r.effect", {"i": 3, "ms": task_s * 1000})
        wait_until(lambda: bq.info(task.id).state is TaskState.RUNNING, 30,
                   what="the task to start")
        stopping = worker_of(cluster, bq.info(task.id).worker)
        stopping.stop(timeout=task_s + 30)  # SIGTERM: finish the task, then exit
        assert stopping.process is not None and stopping.process.returncode == 0
        wait_until(lambda: evidence.hget(bq.keys.task(task.id), "state") == "SUCCEEDED", 10,
                   what="the record to end")
        info = bq.info(task.id)
        assert info.attempts == 1 and info.lost == 0 and info.worker == stopping.hostname
        assert effects_of(evidence, cluster.namespace) == (1, 1, 1)
        assert not any(PUT_BACK in w.log() for w in cluster.workers)
        assert not bq.heartbeats.has(stopping.hostname)  # removed once the pool was done
        report.record(
            "Faults", f"SIGTERM (warm shutdown) of a worker mid-way through a {task_s:.0f} s "
            f"task, longer than the heartbeat timeout ({QUICK_HEARTBEAT_S:.0f} s)",
            "its card said stopping while the pool finished: nothing was put back, the task "
            "ran once; the card went at exit", tasks=1, runs=1, task_s=task_s,
        )
    finally:
        cluster.close()


@pytest.mark.timeout(240)
def test_a_worker_cut_off_from_redis_is_taken_for_dead_and_its_late_result_dropped(
    redis_url: str, evidence: redis.Redis
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    cluster = default_cluster(redis_url, workers=0, settings=QUICK)
    with PartitionProxy(port) as proxy:
        cut_off = WorkerProcess(  # A: through the proxy
            proxy.url(), cluster.namespace, concurrency=1, imports=HANDLERS,
            name=f"{cluster.namespace}-behind-proxy", queues=("default",),
            env={"PYTHONPATH": str(ROOT), "RELIABILITY_EVIDENCE_URL": redis_url,
                 "BO_QUEUE_HEARTBEAT_TIMEOUT_S": QUICK["heartbeat_timeout_s"]},
        )
        try:
            cut_off.start()
            bq = cluster.producer()
            task = bq.submit("r.effect", {"i": 7, "ms": 4000})
            wait_until(lambda: effects_of(evidence, cluster.namespace)[2] == 1, 30,
                       what="the worker behind the proxy to run the task")
            proxy.partition()  # A runs on, but hears nothing and says nothing
            cut_at = time.time()
            rescuer = cluster.add_worker(1, imports=HANDLERS)  # B: straight to Redis
            wait_until(lambda: bq.info(task.id).attempts == 2, QUICK_WINDOW_S + 10, 0.1,
                       what="the task to run again on the other worker")
            rerun_s = time.time() - cut_at
            assert task.get(timeout=30) == 7
            record = bq.keys.task(task.id)
            wait_until(lambda: evidence.hget(record, "state") == "SUCCEEDED", 10,
                       what="the record to end")
            ended = evidence.hgetall(record)
            assert ended["worker"] == rescuer.hostname and ended["lost"] == "1"
            proxy.heal()
            # A's run ended meanwhile; its writes waited for Redis and land now
            wait_until(lambda: f"r.effect[{task.id}] succeeded" in cut_off.log(), 60, 0.2,
                       what="the cut-off worker to finish its late run")
            assert evidence.hgetall(record) == ended  # its ending dropped: the first stays
            assert task.get(timeout=10) == 7
            assert effects_of(evidence, cluster.namespace) == (1, 1, 2)
            wait_until(lambda: bq.heartbeats.alive(bq.heartbeats.cards().get(
                cut_off.hostname)), 30, what="the cut-off worker to beat again")
            after = bq.submit("r.effect", {"i": 8})
            assert after.get(timeout=30) == 8  # and both serve on
        finally:
            cut_off.stop(timeout=10)
            cluster.close()
    report.record(
        "Faults", "a worker cut off from Redis (a proxy holding every byte) for longer "
        f"than the heartbeat timeout ({QUICK_HEARTBEAT_S:.0f} s), mid-task",
        "taken for dead: another worker ran the task again; the cut-off worker's late "
        "ending was dropped (the record keeps the first ending), the effect applied once",
        tasks=1, tasks_lost=0, cut_to_rerun_s=round(rerun_s, 1), runs=2,
    )


@pytest.mark.timeout(300)
def test_a_study_whose_evaluator_is_killed_continues_in_seconds(redis_url: str) -> None:
    cluster = default_cluster(redis_url, workers=0, queues=("bo", "evaluate"), settings=QUICK)
    try:
        cluster.start_workers({"concurrency": 1, "imports": HANDLERS, "queues": ("bo",)},
                              *({"concurrency": 1, "imports": HANDLERS, "queues": ("evaluate",)}
                                for _ in range(2)))
        bq = cluster.producer()
        study = bq.studies.create(
            name="dead-evaluator", parameters=[Range("x", 0.0, 1.0)],
            objectives=[Objective("loss")], evaluator="r.slow_bowl",
            strategy=Strategy(initial_trials=2, max_trials=2, parallelism=1, seed=3),
        )
        assert study.spec.strategy.trial_lease_s == 3600  # the default: no help here
        bq.studies.run(study.id)

        def evaluating() -> str | None:
            running = bq.studies.trials(study.id, TrialStatus.RUNNING)
            task_id = running[0].task_id if running else None
            # the step saves the trial just before it submits the evaluation: no record yet
            ok = task_id is not None and bq.records.state(task_id) is TaskState.RUNNING
            return task_id if ok else None

        wait_until(evaluating, 90, 0.1, what="a trial's evaluation to start")
        task_id = evaluating()
        assert task_id is not None
        worker_of(cluster, bq.info(task_id).worker).kill()
        killed_at = time.time()
        wait_until(lambda: bq.info(task_id).state is TaskState.SUCCEEDED, QUICK_WINDOW_S + 3,
                   0.1, what="the evaluation to run again and end")
        wait_until(lambda: bq.studies.get(study.id).status is StudyStatus.COMPLETED, 90, 0.2,
                   what="the study to complete")
        completed = bq.studies.trials(study.id, TrialStatus.COMPLETED)
        assert len(completed) == 2 and bq.studies.trials(study.id, TrialStatus.FAILED) == []
        assert bq.info(task_id).attempts == 2  # the same trial, its evaluation run again
        report.record(
            "Faults", "a closed-loop study's evaluating worker `kill -9`ed (default "
            f"trial_lease_s 1 h, heartbeat timeout {QUICK_HEARTBEAT_S:.0f} s)",
            "the evaluation ran again within the heartbeat window and the same trial "
            "completed; the study COMPLETED without waiting for the trial lease",
            trials=2, failed_trials=0,
            kill_to_evaluated_s=round(time.time() - killed_at, 1),
        )
    finally:
        cluster.close()
