"""Redis itself fails: it crashes and comes back (AOF on), or it is gone for good."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from bo_queue import BOQueue, BrokerUnavailableError, TaskState
from bo_queue.testing import RedisServer, wait_until
from tests.conftest import new_namespace
from tests.reliability import report
from tests.reliability.cluster import HANDLERS, cluster_of, effects_of, whereabouts

CONNECT_TIMEOUT_S = 1.0


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


def _time_to_error(call: object) -> float:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="unavailable"):
        call()  # type: ignore[operator]
    return time.monotonic() - started


@pytest.mark.timeout(300)
def test_redis_crashes_and_restarts_mid_run(aof_redis: RedisServer) -> None:
    before, after = report.scale(200, 1000), report.scale(50, 200)
    cluster = cluster_of(aof_redis.url, workers=2, concurrency=2,
                         connect_timeout_s=str(CONNECT_TIMEOUT_S))
    evidence = redis.Redis.from_url(aof_redis.url, decode_responses=True)
    try:
        bq = cluster.producer()
        handles = bq.submit_many(
            {"handler": "r.effect", "payload": {"i": i, "ms": 20}} for i in range(before)
        )
        wait_until(lambda: effects_of(evidence, cluster.namespace)[1] >= before // 4, 60,
                   what="a quarter of the tasks to run")
        # A crash (SIGKILL) mid-run, with tasks queued and running: messages BRPOP was
        # handing out at that instant are lost by Redis, and sent again from the outbox.
        aof_redis.kill()
        down_at = time.monotonic()
        # While it is down, producers get a clear error at once, not a hang.
        to_error = max(_time_to_error(lambda: bq.submit("r.effect", {"i": -1})),
                       _time_to_error(lambda: bq.info(handles[0].id)))
        time.sleep(2)  # the outage: workers and producers are cut off meanwhile
        aof_redis.start()  # same port, same directory: the AOF is replayed
        downtime = time.monotonic() - down_at
        # The same producer and the same workers, reconnecting on their own.
        handles += bq.submit_many(
            {"handler": "r.effect", "payload": {"i": i, "ms": 20}}
            for i in range(before, before + after)
        )
        total = before + after
        try:
            wait_until(lambda: effects_of(evidence, cluster.namespace)[0] >= total, 180, 0.5,
                       what="every task to run after the restart")
        except TimeoutError as exc:
            raise AssertionError(whereabouts(bq, [h.id for h in handles])) from exc
        assert sorted(h.get(timeout=60) for h in handles) == list(range(total))
        assert all(bq.info(h.id).state is TaskState.SUCCEEDED for h in handles)
        records, effects, runs = effects_of(evidence, cluster.namespace)
        assert records == effects == total
        assert to_error < CONNECT_TIMEOUT_S + 2
        assert all(w.process is not None and w.process.poll() is None for w in cluster.workers)
        report.record(
            "Faults", "Redis crashes (`kill -9`, AOF on) mid-run and restarts",
            "producer and workers reconnected on their own; every task queued before and "
            "after the outage ran, each effect once; submits while it was down raised a "
            "clear error",
            tasks=total, tasks_lost=total - effects, reruns=runs - total,
            outage_s=round(downtime, 1), error_while_down_s=round(to_error, 2),
        )
    finally:
        cluster.close()
        evidence.close()


def test_a_message_redis_lost_is_sent_again_after_it_restarts(aof_redis: RedisServer) -> None:
    cluster = cluster_of(aof_redis.url, workers=1, concurrency=1)
    evidence = redis.Redis.from_url(aof_redis.url, decode_responses=True)
    try:
        bq = cluster.producer()
        outbox_run_id = f"{bq.keys.outbox}:run_id"
        wait_until(lambda: evidence.exists(outbox_run_id), 10, what="a worker to note run_id")
        cluster.workers[0].stop()
        task = bq.submit("r.effect", {"i": 5})
        queue = bq.keys.broker_prefix + "default:6"  # NORMAL priority's list
        assert evidence.rpop(queue) is not None  # what a BRPOP cut off by a crash does
        assert evidence.hexists(bq.keys.outbox, task.id)
        aof_redis.stop()
        aof_redis.start()  # a new run_id: the restarted worker reconciles the outbox
        cluster.add_worker(1, imports=HANDLERS)
        assert task.get(timeout=30) == 5
        assert not evidence.hexists(bq.keys.outbox, task.id)  # gone once it started
        report.record(
            "Faults", "a message Redis lost (popped, never delivered) before it restarted",
            "sent again from the outbox once the worker saw the new run_id; ran once",
            tasks=1, tasks_lost=0,
        )
    finally:
        cluster.close()
        evidence.close()


def test_redis_gone_for_good_is_a_clear_error_within_the_timeout() -> None:
    server = RedisServer().start()
    bq = BOQueue(redis_url=server.url, namespace=new_namespace(),
                 connect_timeout_s=CONNECT_TIMEOUT_S)
    try:
        import tests.reliability.handlers  # noqa: F401  (declares r.effect here too)

        assert bq.submit("r.effect", {"i": 0}).id  # it works while Redis is there
        server.close()
        waits = {
            "submit": _time_to_error(lambda: bq.submit("r.effect", {"i": 1})),
            "submit_many": _time_to_error(
                lambda: bq.submit_many([{"handler": "r.effect", "payload": {"i": 2}}])),
            "info": _time_to_error(lambda: bq.info("x")),
            "studies.list": _time_to_error(lambda: bq.studies.list()),
        }
        slowest = max(waits.values())
        assert slowest < CONNECT_TIMEOUT_S + 2, waits
        report.record(
            "Faults", "Redis stopped for good",
            "submit, submit_many, info and studies raise BrokerUnavailableError",
            connect_timeout_s=CONNECT_TIMEOUT_S, slowest_error_s=round(slowest, 2),
        )
    finally:
        bq.close()
        server.close()
