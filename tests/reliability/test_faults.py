"""Faults: workers killed at random moments, warm shutdowns, and poison tasks, with real
workers on a real Redis. Every task must end SUCCEEDED with its effect applied once."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from bo_queue import (
    Objective,
    Range,
    Strategy,
    StudyStatus,
    TaskFailedError,
    TaskState,
    TrialStatus,
)
from bo_queue.testing import wait_until
from tests.reliability import report
from tests.reliability.cluster import (
    HANDLERS,
    cluster_of,
    effects_of,
    task_states,
    whereabouts,
)


@pytest.mark.timeout(600)
def test_kill_9_of_workers_at_random_moments(redis_url: str, evidence: redis.Redis) -> None:
    tasks, studies, trials = report.scale(150, 500), report.scale(1, 2), report.scale(6, 10)
    kills = report.scale(3, 8)
    cluster = cluster_of(redis_url, workers=3, concurrency=2,
                         queues=("default", "bo", "evaluate"))
    rng = random.Random(8)
    try:
        bq = cluster.producer()
        # Sobol-only studies: the faults are the point here, not the model's speed.
        ids = [bq.studies.create(
            name=f"chaos-{i}", parameters=[Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)],
            objectives=[Objective("loss")], evaluator="r.bowl",
            strategy=Strategy(initial_trials=trials, max_trials=trials, parallelism=2,
                              seed=i, trial_lease_s=15),
        ).id for i in range(studies)]
        for study_id in ids:
            bq.studies.run(study_id)
        handles = bq.submit_many(
            {"handler": "r.effect", "payload": {"i": i, "ms": rng.choice((50, 150, 300))}}
            for i in range(tasks)
        )

        killed: list[str] = []

        def killer() -> None:
            for _ in range(kills):  # at random moments while tasks are still running
                time.sleep(rng.uniform(0.5, 2.5))
                victim = rng.choice(cluster.workers)
                victim.kill()  # SIGKILL to the worker and its pool processes
                killed.append(victim.name)
                victim.start(wait=0)  # a supervisor restarts it

        chaos = threading.Thread(target=killer, daemon=True)
        chaos.start()

        def finished() -> bool:
            # What beat does every minute: trials whose evaluation died with a worker
            # before it was sent are failed after their lease and replaced.
            bq.submit("bo_queue.maintenance.sweep_studies", {})
            done = all(bq.studies.get(s).status.terminal for s in ids)
            # every task finished, not only its effect applied: a worker killed between
            # the effect and the task's finish leaves it to run again (a no-op) later
            return done and all(state is not None and TaskState(state).terminal
                                for state in task_states(bq, [h.id for h in handles]))

        try:
            wait_until(finished, 420, 2.0, what="every task and study to finish")
        except TimeoutError as exc:
            studies_now = [(s.status, s.completed_trials, s.message)
                           for s in map(bq.studies.get, ids)]
            raise AssertionError(f"studies {studies_now}; tasks "
                                 + whereabouts(bq, [h.id for h in handles])) from exc
        chaos.join(60)
        assert len(killed) == kills

        infos = [bq.info(h.id) for h in handles]
        assert [i.state for i in infos].count(TaskState.SUCCEEDED) == tasks
        assert sorted(h.get(timeout=30) for h in handles) == list(range(tasks))
        records, effects, runs = effects_of(evidence, cluster.namespace)
        assert records == effects == tasks  # each effect applied exactly once
        redelivered = sum(1 for i in infos if i.attempts > 1)
        assert runs >= tasks and redelivered >= 1  # the kills did hit running tasks
        for study_id in ids:
            study = bq.studies.get(study_id)
            assert study.status is StudyStatus.COMPLETED, study.message
            completed = bq.studies.trials(study_id, TrialStatus.COMPLETED)
            assert len(completed) == trials == study.completed_trials
            assert len({t.index for t in completed}) == trials
        report.record(
            "Faults", f"`kill -9` of random workers ({kills} kills, 3 workers) during "
            f"{tasks} tasks and {studies} closed-loop stud{'y' if studies == 1 else 'ies'}",
            "every task SUCCEEDED, each effect applied once; every study COMPLETED with "
            "exactly max_trials trials",
            tasks=tasks, tasks_lost=tasks - effects, reruns_after_kills=runs - tasks,
            redelivered_tasks=redelivered,
            studies_completed=len(ids),
        )
    finally:
        cluster.close()


@pytest.mark.parametrize("noticed_by", ["another worker", "itself, restarted"])
def test_a_message_a_killed_worker_had_just_popped_is_sent_again(
    redis_url: str, evidence: redis.Redis, noticed_by: str
) -> None:
    # kombu pops a message (BRPOP) and only then records it as unacknowledged: a worker
    # killed in between takes the message with it (seen once in the chaos test above).
    cluster = cluster_of(redis_url, workers=1, concurrency=1, heartbeat_timeout_s="2")
    try:
        bq = cluster.producer()
        victim = cluster.workers[0]
        victim.kill()
        task = bq.submit("r.effect", {"i": 7})
        assert evidence.rpop(bq.keys.broker_prefix + "default:6") is not None  # its pop
        if noticed_by == "another worker":  # its heartbeat goes stale
            cluster.add_worker(1, imports=HANDLERS)
        else:  # it finds the card it never removed
            victim.start()
        assert task.get(timeout=60) == 7
        assert effects_of(evidence, cluster.namespace)[:2] == (1, 1)
        wait_until(lambda: not evidence.hexists(bq.keys.outbox, task.id), 10,
                   what="the outbox entry to go once the task started")
        assert "1 message(s) were lost; sent them again" in cluster.workers[-1].log()
        report.record(
            "Faults", f"a worker `kill -9`ed between popping a message and recording it "
            f"(noticed by {noticed_by})", "sent again from the outbox; ran once",
            tasks=1, tasks_lost=0,
        )
    finally:
        cluster.close()


def test_warm_shutdown_mid_task_finishes_it(redis_url: str, evidence: redis.Redis) -> None:
    cluster = cluster_of(redis_url, workers=1, concurrency=1)
    try:
        bq = cluster.producer()
        running = bq.submit("r.effect", {"i": 0, "ms": 1500})
        queued = bq.submit_many({"handler": "r.effect", "payload": {"i": i}} for i in range(1, 6))
        wait_until(lambda: bq.info(running.id).state is TaskState.RUNNING, 30,
                   what="the task to start")
        cluster.workers[0].stop(timeout=30)  # SIGTERM: stop taking tasks, finish this one
        assert bq.info(running.id).state is TaskState.SUCCEEDED
        # The tasks it had not started are still queued: a new worker runs them.
        assert all(bq.info(h.id).state is TaskState.QUEUED for h in queued)
        cluster.add_worker(1, imports=HANDLERS)
        assert [h.get(timeout=60) for h in queued] == [1, 2, 3, 4, 5]
        assert effects_of(evidence, cluster.namespace)[:2] == (6, 6)
        report.record(
            "Faults", "SIGTERM (warm shutdown) of a worker mid-task",
            "the running task finished; the ones it had not started ran on a new worker",
            tasks=6, tasks_lost=0,
        )
    finally:
        cluster.close()


def test_sigterm_then_sigkill_mid_task_requeues_it(redis_url: str,
                                                   evidence: redis.Redis) -> None:
    cluster = cluster_of(redis_url, workers=1, concurrency=1)
    try:
        bq = cluster.producer()
        task = bq.submit("r.effect", {"i": 7, "ms": 4000})
        wait_until(lambda: bq.info(task.id).state is TaskState.RUNNING, 30,
                   what="the task to start")
        # `docker stop` with a grace period shorter than the task: SIGTERM, then SIGKILL.
        cluster.workers[0].stop(timeout=0.5)
        assert bq.info(task.id).state is TaskState.RUNNING  # never reported done
        cluster.add_worker(1, imports=HANDLERS)
        assert task.get(timeout=60) == 7  # back after the visibility timeout, run again
        info = bq.info(task.id)
        assert info.state is TaskState.SUCCEEDED and info.attempts == 2 and info.lost == 1
        assert effects_of(evidence, cluster.namespace)[:2] == (1, 1)
        report.record(
            "Faults", "SIGTERM then SIGKILL (grace period shorter than the task)",
            "the task came back after the visibility timeout and ran to SUCCEEDED once",
            tasks=1, tasks_lost=0, attempts=info.attempts,
        )
    finally:
        cluster.close()


def test_a_poison_task_fails_after_its_retry_budget(redis_url: str,
                                                    evidence: redis.Redis) -> None:
    cluster = cluster_of(redis_url, workers=1, concurrency=1, max_lost_runs="2")
    try:
        bq = cluster.producer()
        poison = bq.submit("r.poison", {})
        healthy = bq.submit("r.effect", {"i": 1})
        with pytest.raises(TaskFailedError, match="died 3 times") as failure:
            poison.get(timeout=90)
        assert failure.value.remote_type == "bo_queue.errors.TaskLostError"
        info = bq.info(poison.id)
        assert info.state is TaskState.FAILED and info.lost == 3
        # one first run and two more (max_lost_runs=2 here; the default is 3)
        assert int(evidence.get(f"rel:{cluster.namespace}:poison-runs") or 0) == 3
        assert healthy.get(timeout=30) == 1  # the worker is still serving
        # (the record, and so the registry, says FAILED just after the stored failure)
        wait_until(lambda: [t.id for t in bq.failed()] == [poison.id], 10,
                   what="the poison task in the failed registry")
        report.record(
            "Faults", "a poison task that kills its worker process every run",
            "FAILED (TaskLostError) after 1 run + 2 redeliveries (max_lost_runs=2); "
            "the worker kept serving",
            runs=3, worker_processes_lost=3,
        )
    finally:
        cluster.close()
