"""Where and when tasks run: capabilities, cluster-wide limits, resources, versions,
async handlers and worker pools, with real workers on a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from bo_queue import TaskCancelledError, TaskState, TaskTimeoutError, ValidationError
from bo_queue.testing import wait_until
from tests.conftest import Cluster, new_namespace

HANDLERS = ("tests.integration.handlers", "tests.integration.placement_handlers")


def start(cluster: Cluster, *workers: dict[str, object]) -> None:
    """Start workers side by side with this file's handlers."""
    cluster.start_workers(*({"imports": HANDLERS, **w} for w in workers))


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    c = Cluster(redis_url, new_namespace(), {"visibility_timeout_s": "20",
                                            "hold_delays_over_s": "5",
                                            "restore_sweep_s": "1", "limit_lease_s": "3"})
    yield c
    c.close()


def test_a_task_that_requires_gpu_runs_only_where_gpu_is_declared(cluster: Cluster) -> None:
    start(cluster, {"name": f"{cluster.namespace}-cpu", "concurrency": 2})
    bq = cluster.producer()
    gpu = bq.submit_many({"handler": "p.gpu_job"} for _ in range(12))
    plain = bq.submit_many({"handler": "p.anywhere"} for _ in range(12))
    assert {h.get(timeout=60) for h in plain} == {f"{cluster.namespace}-cpu"}
    # the CPU worker ran all of those, and none of these: they wait for a GPU worker
    assert all(bq.info(h.id).state is TaskState.QUEUED for h in gpu)
    assert all(bq.info(h.id).queue == "default.gpu" for h in gpu)
    start(cluster, {"name": f"{cluster.namespace}-gpu", "settings": {"capabilities": "gpu"}})
    assert {h.get(timeout=60) for h in gpu} == {f"{cluster.namespace}-gpu"}
    cards = {w.hostname.split("@")[0]: w for w in bq.monitor.workers()}
    assert cards[f"{cluster.namespace}-gpu"].capabilities == ["gpu"]
    assert cards[f"{cluster.namespace}-cpu"].capabilities == []


def test_a_cluster_wide_limit_holds_and_a_killed_workers_slot_comes_back(
    cluster: Cluster, evidence: redis.Redis
) -> None:
    start(cluster, *({"concurrency": 2} for _ in range(3)))
    bq = cluster.producer()
    group = f"{cluster.namespace}-limit"
    handles = bq.submit_many({"handler": "p.limited", "payload": {"group": group, "seconds": 0.4}}
                             for _ in range(12))
    assert len([h.get(timeout=120) for h in handles]) == 12
    assert evidence.get(f"evidence:placement:{group}:peak") == "2"  # 6 processes, 2 at once

    # Two long runs hold both slots; the worker of one is killed: its slot is held
    # until its lease (3 s) runs out, then a short task gets it.
    hold = f"{cluster.namespace}-hold"
    long_runs = bq.submit_many({"handler": "p.limited", "payload": {"group": hold,
                                                                    "seconds": 30}}
                               for _ in range(2))
    wait_until(lambda: evidence.get(f"evidence:placement:{hold}:running") == "2", 30,
               what="both slots taken")
    victim_name = bq.info(long_runs[0].id).worker or ""
    victim = next(w for w in cluster.workers if w.hostname == victim_name)
    survivor_runs = [h for h in long_runs if bq.info(h.id).worker != victim_name]
    victim.kill()
    killed_at = time.time()
    after = f"{cluster.namespace}-after"
    short = bq.submit("p.limited", {"group": after, "seconds": 0})
    assert short.get(timeout=30)
    started = float(evidence.lindex(f"evidence:placement:{after}:starts", 0) or 0)
    # not before the killed run's lease (3 s, renewed every second) ran out
    assert started - killed_at >= 3.0 - 1.0 - 0.2, started - killed_at
    holders = bq.keys.slots("p.limited")[0]
    for run in survivor_runs:  # a run on a live worker keeps its slot, renewed
        assert bq.info(run.id).state is TaskState.RUNNING
        assert (evidence.zscore(holders, run.id) or 0) > time.time()


def test_a_global_rate_limit_spans_workers(cluster: Cluster, evidence: redis.Redis) -> None:
    start(cluster, {"concurrency": 2}, {"concurrency": 2})
    bq = cluster.producer()
    group = f"{cluster.namespace}-rate"
    handles = bq.submit_many({"handler": "p.rated", "payload": {"group": group}}
                             for _ in range(15))
    assert len([h.get(timeout=60) for h in handles]) == 15
    starts = sorted(float(t) for t in evidence.lrange(f"evidence:placement:{group}:starts", 0, -1))
    # 5 a second across both workers, counted at admission (in Redis's time). The handler
    # notes its start a little later (up to DELAY under load): so no window of 1 - DELAY
    # seconds of handler starts may hold more than 5, and 15 starts span >= 2 - DELAY.
    delay = 0.25
    assert max(sum(1 for t in starts if first <= t < first + 1.0 - delay)
               for first in starts) <= 5
    assert starts[-1] - starts[0] >= 2.0 - delay


def test_resources_fit_and_every_run_reports_what_it_cost(cluster: Cluster,
                                                         evidence: redis.Redis) -> None:
    # Two processes, but cpu=2 offered and p.heavy needs 2: one run at a time.
    start(cluster, {"concurrency": 2, "settings": {"offers": "cpu=2,memory_mb=4096"}})
    bq = cluster.producer()
    group = f"{cluster.namespace}-heavy"
    handles = bq.submit_many({"handler": "p.heavy", "payload": {"group": group, "seconds": 0.3}}
                             for _ in range(4))
    assert len([h.get(timeout=60) for h in handles]) == 4
    assert evidence.get(f"evidence:placement:{group}:peak") == "1"
    # written with SUCCEEDED, just after the result a waiter is woken by
    wait_until(lambda: bq.info(handles[0].id).usage is not None, 10, what="the usage")
    info = bq.info(handles[0].id)
    assert info.usage is not None
    assert info.usage["cpu_s"] >= 0.25 and info.usage["wall_s"] >= info.usage["cpu_s"] * 0.9
    assert info.usage["peak_rss_mb"] > 10
    assert info.log[0] == "INFO burning 0.3 s" and info.log[1].startswith("WARNING done after")
    # A submit may need less, or more than any live worker offers (a clear error).
    assert bq.submit("p.heavy", {"group": group, "seconds": 0},
                     resources={"cpu": 1}).get(timeout=30)
    with pytest.raises(ValidationError, match="no live worker on queue 'default' offers"):
        bq.submit("p.heavy", {"group": group, "seconds": 0}, resources={"cpu": 64})


def test_versions_are_recorded_and_an_unserved_version_is_an_error(cluster: Cluster) -> None:
    start(cluster, {"concurrency": 1})
    bq = cluster.producer()
    pinned = bq.submit("p.versioned", {}, version="2")
    assert pinned.get(timeout=30) == "v2"
    assert bq.info(pinned.id).version == "2"
    unpinned = bq.submit("p.versioned", {})
    assert unpinned.get(timeout=30) == "v2" and bq.info(unpinned.id).version == "2"
    with pytest.raises(ValidationError, match=r"no live worker serves handler 'p\.versioned' "
                                              r"version '3' on queue 'default'"):
        bq.submit("p.versioned", {}, version="3")


def test_async_handlers_on_every_pool_report_progress_and_stop_when_cancelled(
    redis_url: str,
) -> None:
    pools = {"default": "prefork", "threads": "threads", "solo": "solo"}
    cluster = Cluster(redis_url, new_namespace(), {"queues": ",".join(pools)})
    try:
        start(cluster, *({"pool": pool, "concurrency": 1 if pool == "solo" else 2,
                          "queues": (queue,)} for queue, pool in pools.items()))
        bq = cluster.producer()
        for queue in pools:
            assert bq.submit("p.async_steps", {"steps": 3}, queue=queue).get(timeout=30) == 3
            long = bq.submit("p.async_steps", {"steps": 600}, queue=queue)
            wait_until(lambda: bq.info(long.id).progress > 0, 30, what="progress")  # noqa: B023
            assert bq.info(long.id).progress_message.startswith("step ")
            bq.cancel(long.id)
            with pytest.raises(TaskCancelledError):
                long.get(timeout=30)
            assert bq.info(long.id).state is TaskState.CANCELLED
            with pytest.raises(TaskTimeoutError, match="ran past its time limit of 1 s"):
                bq.submit("p.async_slow", {}, queue=queue).get(timeout=30)
            assert bq.submit("p.anywhere", {}, queue=queue).get(timeout=30)  # still serving
    finally:
        cluster.close()
