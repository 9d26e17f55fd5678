"""A worker lost mid-task: the task runs again elsewhere, nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bo_queue import TaskState
from bo_queue.local import wait_until
from tests.conftest import Cluster, make_cluster


@pytest.fixture
def pair(redis_url: str) -> Iterator[Cluster]:
    # A short visibility timeout so the survivor reclaims the lost message within seconds
    # (kombu restores unacknowledged messages older than it, every few seconds).
    c = make_cluster(redis_url, workers=2, concurrency=1,
                     visibility_timeout_s="10", hold_delays_over_s="5",
                     restore_sweep_s="1")
    yield c
    c.close()


def test_kill_9_of_a_worker_mid_task(pair: Cluster, evidence: redis.Redis) -> None:
    bq = pair.producer()
    victim_task = bq.submit("t.survivor", {"seconds": 2})
    others = bq.submit_many({"handler": "t.echo", "payload": {"i": i}} for i in range(20))
    runners = f"evidence:survivor:{victim_task.id}"
    wait_until(lambda: evidence.llen(runners) == 1, 20, what="the task to start")
    first = evidence.lindex(runners, 0)
    doomed = next(w for w in pair.workers if w.name == first)
    doomed.kill()  # SIGKILL to the worker and its pool processes

    assert victim_task.get(timeout=60) == {"attempt": 2}
    survivor = next(w for w in pair.workers if w is not doomed)
    assert evidence.lrange(runners, 0, -1) == [doomed.name, survivor.name]
    info = bq.info(victim_task.id)
    assert info.state is TaskState.SUCCEEDED and info.attempts == 2
    assert [h.get(timeout=60)["i"] for h in others] == list(range(20))  # none lost
