"""Load: many queued tasks and concurrent studies on one Redis, with memory measured.

Two identical waves of tasks: after each has run and its records and results have
expired, Redis and the workers must be back where they were (no growth), and nothing
may have grown without bound while it ran."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
import redis

from bo_queue import BOQueue, Objective, Range, Strategy, StudyStatus, TaskState
from bo_queue.testing import RedisServer, wait_until
from tests.conftest import Cluster
from tests.reliability import report
from tests.reliability.cluster import cluster_of, effects_of

RETENTION_S = report.scale(5, 30)
MB = 1024 * 1024


@pytest.fixture
def quiet_redis() -> Iterator[RedisServer]:
    """A Redis of its own, so its memory is this test's alone."""
    with RedisServer() as server:
        yield server


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def worker_rss(cluster: Cluster) -> list[int]:
    """Resident memory of each worker: its main process and its pool processes."""
    sizes = []
    for worker in cluster.workers:
        main = psutil.Process(worker.pid)
        sizes.append(sum(p.memory_info().rss for p in [main, *main.children(recursive=True)]))
    return sizes


def run_wave(bq: BOQueue, evidence: redis.Redis, client: redis.Redis, tasks: int,
             offset: int) -> tuple[int, float]:
    """Queue `tasks` tasks at once, wait for them all; (peak Redis memory, seconds)."""
    started = time.monotonic()
    batch = 2000
    for first in range(0, tasks, batch):
        bq.submit_many({"handler": "r.effect", "payload": {"i": offset + i}}
                       for i in range(first, min(first + batch, tasks)))
    peak = used_memory(client)

    def done() -> bool:
        nonlocal peak
        peak = max(peak, used_memory(client))
        return effects_of(evidence, bq.settings.namespace)[1] >= offset + tasks

    wait_until(done, 900, 0.5, what=f"{tasks} tasks to run")
    return peak, time.monotonic() - started


def expiring(client: redis.Redis, namespace: str) -> int:
    """How many task records and results of the namespace still wait for their TTL."""
    keys = [key for pattern in (f"{namespace}:task:*", f"{namespace}:results:*")
            for key in client.scan_iter(pattern, count=1000)]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
        return sum(1 for ttl in pipe.execute() if ttl >= 0)


def settle(bq: BOQueue, client: redis.Redis) -> tuple[int, int]:
    """Wait out the retention, prune the indexes as beat's purge job does; (memory, keys)."""
    wait_until(lambda: expiring(client, bq.settings.namespace) == 0, RETENTION_S + 60, 0.5,
               what="the records and results to expire (Redis TTLs)")
    assert bq.submit("bo_queue.maintenance.purge_indexes", {}).get(timeout=300) >= 0
    keys = sum(1 for _ in client.scan_iter(f"{bq.settings.namespace}:*", count=1000))
    return used_memory(client), keys


@pytest.mark.timeout(1800)
def test_many_tasks_and_studies_then_memory_returns(
    quiet_redis: RedisServer, redis_url: str, evidence: redis.Redis
) -> None:
    # The quick size leaves the studies out: workers that serve them import Ax first.
    tasks, studies = report.scale(600, 20_000), report.scale(0, 50)
    client = redis.Redis.from_url(quiet_redis.url, decode_responses=True)
    cluster = cluster_of(quiet_redis.url, workers=2, concurrency=2,
                         queues=("default", "bo", "evaluate") if studies else ("default",),
                         evidence_url=redis_url,  # the handlers' evidence: not in this Redis
                         result_expires_s=str(RETENTION_S), events_max_len="1000")
    try:
        bq = cluster.producer()
        baseline = used_memory(client)
        ids = [bq.studies.create(
            name=f"load-{i}", parameters=[Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)],
            objectives=[Objective("loss")], evaluator="r.bowl",
            strategy=Strategy(initial_trials=4, max_trials=4, parallelism=2, seed=i),
        ).id for i in range(studies)]
        for study_id in ids:
            bq.studies.run(study_id)
        peak1, _ = run_wave(bq, evidence, client, tasks, 0)
        wait_until(lambda: all(bq.studies.get(s).status.terminal for s in ids), 900, 1.0,
                   what="every study to end")
        assert all(bq.studies.get(s).status is StudyStatus.COMPLETED for s in ids)
        rss1 = worker_rss(cluster)
        after1, keys1 = settle(bq, client)

        peak2, took2 = run_wave(bq, evidence, client, tasks, tasks)
        rss2 = worker_rss(cluster)
        after2, keys2 = settle(bq, client)

        assert effects_of(evidence, cluster.namespace)[:2] == (2 * tasks, 2 * tasks)
        # Back where it was: what stays is the studies and the capped event stream.
        assert keys2 <= keys1 + 5, (keys1, keys2)
        assert after2 <= after1 * 1.10 + 2 * MB, (after1, after2)
        per_task = (max(peak1, peak2) - baseline) / tasks
        assert per_task < 8192  # bounded while it ran: a few KiB per queued task
        for before, now in zip(rss1, rss2, strict=True):
            assert now <= before * 1.15 + 30 * MB, (rss1, rss2)  # no growth per wave
            assert now < 2048 * MB
        report.record(
            "Load", f"{tasks:,} tasks queued at once (twice)"
            + (f" and {studies} concurrent closed-loop studies" if studies else "")
            + " on one Redis, 2 workers x 2 processes",
            f"every task ran{', every study COMPLETED' if studies else ''}; after the "
            "retention Redis and the "
            "workers were back where they were (no growth from one wave to the next)",
            tasks=2 * tasks, studies=studies,
            redis_peak_mb=round(max(peak1, peak2) / MB, 1),
            redis_after_wave_1_mb=round(after1 / MB, 1),
            redis_after_wave_2_mb=round(after2 / MB, 1),
            redis_baseline_mb=round(baseline / MB, 1),
            redis_bytes_per_queued_task=round(per_task),
            worker_rss_mb=" / ".join(f"{a / MB:.0f}->{b / MB:.0f}"
                                     for a, b in zip(rss1, rss2, strict=True)),
            tasks_per_s=round(tasks / took2),
        )
    finally:
        cluster.close()
        client.close()


SOAK_S, SOAK_RATE = 600, 20  # ten minutes at 20 tasks a second


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 600)
def test_soak_latency_does_not_drift(redis_url: str) -> None:
    cluster = cluster_of(redis_url, workers=2, concurrency=2)
    try:
        bq = cluster.producer()
        ids: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < SOAK_S:
            ids.append(bq.submit("r.effect", {"i": len(ids), "ms": 10}).id)
            time.sleep(max(0.0, len(ids) / SOAK_RATE - (time.monotonic() - started)))
        wait_until(lambda: bq.info(ids[-1]).state is TaskState.SUCCEEDED, 120,
                   what="the last task")
        infos = [info for first in range(0, len(ids), 1000)
                 for info in bq.records.get_many(ids[first:first + 1000])]
        assert all(i is not None and i.state is TaskState.SUCCEEDED for i in infos)
        # latency: from submit to the record saying SUCCEEDED, by the minute submitted
        by_minute: dict[int, list[float]] = {}
        origin = min(i.created_at for i in infos if i is not None)
        for info in infos:
            assert info is not None and info.finished_at is not None
            minute = int((info.created_at - origin).total_seconds() // 60)
            by_minute.setdefault(minute, []).append(
                (info.finished_at - info.created_at).total_seconds())
        p99 = [sorted(v)[int(0.99 * (len(v) - 1))] for _, v in sorted(by_minute.items())]
        first, last = sorted(p99[:3])[1], sorted(p99[-3:])[1]  # medians of 3 minutes
        assert last <= first * 1.5 + 0.05, p99  # no drift up
        report.record(
            "Load", f"soak: {SOAK_S // 60} minutes of steady submission at {SOAK_RATE} "
            "tasks/s (2 workers x 2 processes)",
            "every task SUCCEEDED; p99 latency of the last minutes within 1.5x (+50 ms) "
            "of the first",
            tasks=len(ids), p99_first_minutes_ms=round(first * 1000, 1),
            p99_last_minutes_ms=round(last * 1000, 1),
            p99_worst_minute_ms=round(max(p99) * 1000, 1),
        )
    finally:
        cluster.close()
