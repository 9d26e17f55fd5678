"""Schedules on celery beat (celery-redbeat), with real beat and worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bo_queue import (
    BOQueue,
    FileStorage,
    Objective,
    Range,
    Strategy,
    StudyStatus,
    TaskState,
    UnknownHandlerError,
    ValidationError,
)
from bo_queue.testing import BeatProcess, RedisServer, WorkerProcess, free_port, wait_until
from tests.conftest import HANDLERS, ROOT, Cluster, make_cluster, new_namespace


@pytest.fixture(scope="module")
def timed(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=2)
    yield c
    c.close()


@pytest.fixture
def bq(timed: Cluster) -> BOQueue:
    return timed.producer()


@pytest.fixture
def beat(timed: Cluster) -> Iterator[BeatProcess]:
    process = BeatProcess(timed.redis_url, timed.namespace).start()
    yield process
    process.stop()


def runs(bq: BOQueue, name: str) -> list[float]:
    """When each run of a schedule was submitted (its tasks carry `schedule:<name>`)."""
    infos = [bq.info(task_id) for task_id in bq.records.tagged(f"schedule:{name}")]
    return sorted(info.created_at.timestamp() for info in infos)


@pytest.mark.timeout(120)
def test_a_one_second_schedule_runs_and_stops_when_removed(
    bq: BOQueue, beat: BeatProcess
) -> None:
    bq.schedules.add("tick", "t.echo", {"tick": True}, every=1)
    wait_until(lambda: len(runs(bq, "tick")) >= 1, 30, what="the first run")
    first = runs(bq, "tick")[0]
    time.sleep(5)  # the behaviour under test is a rate over this window
    in_window = [t for t in runs(bq, "tick") if first <= t <= first + 5]
    assert len(in_window) >= 3, in_window
    assert bq.schedules.remove("tick")
    time.sleep(1.5)  # let a run that was already under way land
    settled = len(runs(bq, "tick"))
    time.sleep(3)
    assert len(runs(bq, "tick")) == settled
    assert not bq.schedules.remove("tick")


@pytest.mark.timeout(120)
def test_a_schedule_added_while_beat_runs_survives_a_beat_restart(
    bq: BOQueue, timed: Cluster
) -> None:
    first = BeatProcess(timed.redis_url, timed.namespace).start()
    try:
        time.sleep(2)  # beat is up and looping before the schedule exists
        bq.schedules.add("later", "t.echo", {}, every=1, tags=("mine",))
        wait_until(lambda: len(runs(bq, "later")) >= 2, 30, what="runs without a restart")
    finally:
        first.stop()
    before = len(runs(bq, "later"))
    second = BeatProcess(timed.redis_url, timed.namespace).start()
    try:
        wait_until(lambda: len(runs(bq, "later")) >= before + 2, 40,
                   what="runs after the restart")
    finally:
        second.stop()
    assert bq.schedules.get("later").total_runs >= before
    tagged = bq.info(bq.records.tagged("schedule:later").pop())
    assert "mine" in tagged.tags
    bq.schedules.remove("later")


@pytest.mark.timeout(120)
def test_two_beats_fire_each_tick_once(bq: BOQueue, timed: Cluster) -> None:
    beats = [BeatProcess(timed.redis_url, timed.namespace).start() for _ in range(2)]
    try:
        bq.schedules.add("once", "t.echo", {}, every=1)
        wait_until(lambda: len(runs(bq, "once")) >= 1, 30, what="the first run")
        first = runs(bq, "once")[0]
        time.sleep(8)  # the behaviour under test is a rate over this window
        in_window = [t for t in runs(bq, "once") if first <= t < first + 6]
        holders = [p for p in beats if "beat: Acquired lock" in p.log()]
    finally:
        for process in beats:
            process.stop()
        bq.schedules.remove("once")
    assert len(holders) == 1  # one active beat; the other waits for redbeat's lock
    # one beat: about one run a second; two beats both firing would give about twelve
    assert 4 <= len(in_window) <= 8, in_window


def test_pause_and_resume(bq: BOQueue) -> None:
    info = bq.schedules.add("paused", "t.echo", {}, every=60)
    assert info.enabled and info.next_run_at is not None
    assert not bq.schedules.pause("paused").enabled
    assert bq.schedules.resume("paused").enabled
    assert "paused" in {s.name for s in bq.schedules.list()}
    bq.schedules.remove("paused")


def test_bad_schedules_are_rejected(bq: BOQueue) -> None:
    with pytest.raises(ValidationError, match="positive"):
        bq.schedules.add("bad", "t.echo", every=0)
    with pytest.raises(ValidationError, match="invalid cron"):
        bq.schedules.add("bad", "t.echo", cron="61 * * * *")
    with pytest.raises(ValidationError, match="five fields"):
        bq.schedules.add("bad", "t.echo", cron="* * *")
    with pytest.raises(ValidationError, match="exactly one"):
        bq.schedules.add("bad", "t.echo")
    with pytest.raises(ValidationError, match="unknown time zone"):
        bq.schedules.add("bad", "t.echo", cron="0 3 * * *", timezone="Mars/Olympus")
    with pytest.raises(UnknownHandlerError):
        bq.schedules.add("bad", "no.such.handler", every=5)
    bq.schedules.add("dup", "t.echo", every=30)
    with pytest.raises(ValidationError, match="replace=True"):
        bq.schedules.add("dup", "t.echo", every=30)
    assert bq.schedules.add("dup", "t.echo", every=10, replace=True).every_s == 10
    nightly = bq.schedules.add("nightly", "t.echo", cron="0 3 * * *")
    assert nightly.next_run_at is not None and nightly.next_run_at.hour == 3
    for name in ("dup", "nightly"):
        bq.schedules.remove(name)


def test_schedule_command_line(timed: Cluster) -> None:
    env = {**os.environ, "BO_QUEUE_REDIS_URL": timed.redis_url,
           "BO_QUEUE_NAMESPACE": timed.namespace, "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bo_queue.cli", "schedule", *args],
                              capture_output=True, text=True, timeout=60, env=env)

    added = cli("add", "cli-nightly", "t.echo", "--cron", "30 2 * * *", "--payload", '{"a": 1}')
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["cron"] == "30 2 * * *"
    assert "cli-nightly  t.echo  cron '30 2 * * *'" in cli("list").stdout
    assert json.loads(cli("pause", "cli-nightly").stdout)["enabled"] is False
    assert "(paused)" in cli("list").stdout
    assert json.loads(cli("resume", "cli-nightly").stdout)["enabled"] is True
    assert cli("remove", "cli-nightly").returncode == 0
    missing = cli("remove", "cli-nightly")
    assert missing.returncode == 2 and "no schedule named 'cli-nightly'" in missing.stderr
    bad = cli("add", "x", "t.echo", "--every", "-1")
    assert bad.returncode == 2 and "positive" in bad.stderr


@pytest.mark.timeout(180)
def test_a_study_schedule_starts_studies_from_its_template(
    redis_url: str,
) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=2,
                           queues=("default", "bo", "evaluate"))
    beat = BeatProcess(cluster.redis_url, cluster.namespace).start()
    try:
        bq = cluster.producer()
        template = {
            "name": "nightly", "evaluator": "t.quadratic",
            "parameters": [{"kind": "range", "name": "x", "low": 0, "high": 1}],
            "objectives": [{"name": "loss"}],
            "strategy": {"initial_trials": 2, "max_trials": 2, "seed": 1},
        }
        bq.schedules.add_study("reoptimize", template, every=2)
        wait_until(lambda: any(s.status == "COMPLETED" for s in bq.studies.list()), 90,
                   what="a scheduled study to complete")
        bq.schedules.remove("reoptimize")
        started = [s for s in bq.studies.list() if s.name.startswith("nightly ")]
        assert started and all(s.spec.evaluator == "t.quadratic" for s in started)
    finally:
        beat.stop()
        cluster.close()


@pytest.mark.timeout(180)
def test_the_lease_sweep_fails_an_orphaned_trial_and_the_study_goes_on(
    redis_url: str,
) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=2,
                           queues=("default", "bo", "evaluate"))
    try:
        bq = cluster.producer()
        study = bq.studies.create(
            name="orphan", parameters=[Range("x", 0.0, 1.0)], objectives=[Objective("loss")],
            strategy=Strategy(initial_trials=2, max_trials=2, seed=0, trial_lease_s=1),
        )
        [orphan] = bq.studies.suggest(study.id, timeout=120)  # nobody will report it
        time.sleep(1.5)  # past its lease: the sweep is about time passing
        swept = bq.submit("bo_queue.maintenance.sweep_studies", {}).get(timeout=60)
        assert swept == [study.id]
        wait_until(lambda: bq.studies.trial(study.id, orphan.index).status == "FAILED", 60,
                   what="the orphan to be failed")
        for trial in bq.studies.suggest(study.id, count=2, timeout=120):  # it goes on
            bq.studies.report(study.id, trial.index, {"loss": 0.5})
        assert bq.studies.wait(study.id, timeout=60).completed_trials == 2
    finally:
        cluster.close()


@pytest.mark.timeout(180)
def test_the_sweep_steps_a_closed_loop_whose_first_step_died(redis_url: str) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=2,
                           queues=("default", "bo", "evaluate"))
    try:
        bq = cluster.producer()
        space, objectives = [Range("x", 0.0, 1.0)], [Objective("loss")]
        strategy = Strategy(initial_trials=2, max_trials=2, seed=0, trial_lease_s=1)
        study = bq.studies.create(name="stalled", parameters=space, objectives=objectives,
                                  evaluator="t.quadratic", strategy=strategy)
        idle = bq.studies.create(name="never run", parameters=space, objectives=objectives,
                                 evaluator="t.quadratic", strategy=strategy)
        # What run() and a step killed before it saved a trial leave: a closed loop,
        # INITIALIZING, no trial, and no step on its way.
        store = bq.studies.store
        store.redis.hset(store.meta(study.id), "mode", "closed_loop")
        store.set_status(study.id, StudyStatus.INITIALIZING, {StudyStatus.CREATED})
        time.sleep(1.5)  # quiet for longer than a trial lease: the sweep is about time
        swept = bq.submit("bo_queue.maintenance.sweep_studies", {}).get(timeout=60)
        assert swept == [study.id]  # not the study nobody ran
        done = bq.studies.wait(study.id, timeout=120)
        assert done.status is StudyStatus.COMPLETED and done.completed_trials == 2
        assert bq.studies.get(idle.id).status is StudyStatus.CREATED
    finally:
        cluster.close()


@pytest.mark.timeout(120)
def test_archiving_moves_old_finished_studies_to_files(redis_url: str, tmp_path: Path) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=1, archive_dir=str(tmp_path))
    try:
        bq = cluster.producer()
        done = bq.studies.create(name="old", parameters=[Range("x", 0.0, 1.0)],
                                 objectives=[Objective("loss")])
        bq.studies.fail(done.id, "given up")
        live = bq.studies.create(name="live", parameters=[Range("x", 0.0, 1.0)],
                                 objectives=[Objective("loss")])
        archived = bq.submit("bo_queue.maintenance.archive_studies",
                             {"older_than_days": 0}).get(timeout=60)
        assert archived == [done.id]
        assert (tmp_path / done.id / "metadata.json").exists()
        assert {s.id for s in bq.studies.list()} == {live.id}
        restored = bq.studies.load(done.id, FileStorage(tmp_path))
        assert restored.status == "FAILED" and restored.message == "given up"
    finally:
        cluster.close()


def test_a_zoned_cron_schedule_runs_on_its_wall_clock(bq: BOQueue) -> None:
    from zoneinfo import ZoneInfo

    info = bq.schedules.add("berlin", "t.echo", cron="0 3 * * *", timezone="Europe/Berlin")
    assert info.timezone == "Europe/Berlin" and info.next_run_at is not None
    local = info.next_run_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (3, 0)
    assert bq.schedules.get("berlin").next_run_at == info.next_run_at  # read back zoned
    bq.schedules.remove("berlin")


@pytest.mark.timeout(120)
def test_static_schedules_from_a_file(timed: Cluster, tmp_path: Path) -> None:
    (tmp_path / "schedules.toml").write_text(
        '[schedules.from-file]\nhandler = "t.echo"\nevery = 1\npayload = { static = true }\n'
        'tags = ["static"]\n'
    )
    beat = BeatProcess(timed.redis_url, timed.namespace,
                       env={"BO_QUEUE_SCHEDULE_FILE": str(tmp_path / "schedules.toml")}).start()
    bq = timed.producer()
    try:
        wait_until(lambda: len(runs(bq, "from-file")) >= 2, 40, what="runs of the static schedule")
    finally:
        beat.stop()
    task = bq.info(sorted(bq.records.tagged("schedule:from-file"))[0])
    assert "static" in task.tags and task.handler == "t.echo"


def test_purge_drops_index_entries_whose_records_expired(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    kept, expired = bq.submit("t.echo", {}, tags=("purge-me",)), bq.submit("t.echo", {},
                                                                            tags=("purge-me",))
    kept.get(timeout=20)
    expired.get(timeout=20)
    # the records end (and join the SUCCEEDED index) just after the results are stored
    wait_until(lambda: all(bq.records.state(h.id) is TaskState.SUCCEEDED
                           for h in (kept, expired)), 10, what="both records to end")
    evidence.delete(bq.keys.task(expired.id))  # as its TTL would
    evidence.hset(bq.delays.specs, "orphan-spec", "{}")  # a held send with no schedule
    removed = bq.submit("bo_queue.maintenance.purge_indexes", {}).get(timeout=30)
    assert removed >= 2
    assert bq.records.tagged("purge-me") == {kept.id}
    assert not evidence.hexists(bq.delays.specs, "orphan-spec")
    succeeded = set(evidence.zrange(bq.keys.state_index("SUCCEEDED"), 0, -1))
    assert kept.id in succeeded and expired.id not in succeeded  # the state index too


@pytest.mark.timeout(120)
def test_beat_started_before_redis_waits_for_it_then_runs_schedules() -> None:
    """As a compose file may start it: beat up first, Redis a few seconds later."""
    port = free_port()
    url, namespace = f"redis://127.0.0.1:{port}/0", new_namespace()
    beat = BeatProcess(url, namespace, env={"PYTHONPATH": str(ROOT)}).start()
    try:
        wait_until(lambda: "Redis unavailable at start" in beat.log(), 60,
                   what="beat to find Redis down")
        with RedisServer(port=port), WorkerProcess(url, namespace, imports=(HANDLERS,),
                                                   env={"PYTHONPATH": str(ROOT)}):
            bq = BOQueue(redis_url=url, namespace=namespace)
            bq.schedules.add("late", "t.echo", {"late": True}, every=1)
            wait_until(lambda: len(runs(bq, "late")) >= 2, 60, what="two runs")
            assert beat.process is not None and beat.process.poll() is None
            bq.close()
    finally:
        beat.stop()
