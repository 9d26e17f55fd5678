"""Redis Sentinel: a real master, two replicas and three sentinels (bo_queue.testing's
SentinelSet); the facade, a worker, beat, health and status reach the master through
`sentinel://` URLs, and follow it through a failover with nothing restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from kombu import Connection

from bo_queue import AsyncBOQueue, BOQueue, BrokerUnavailableError, ConfigurationError, Settings
from bo_queue.core.connections import redis_client, replication
from bo_queue.monitor.health import check_health
from bo_queue.monitor.status import render_status
from bo_queue.testing import BeatProcess, SentinelSet, wait_until
from tests.conftest import ROOT, Cluster, new_namespace

CONNECT_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet() as deployment:
        yield deployment


@pytest.fixture(scope="module")
def cluster(sentinels: SentinelSet, redis_url: str) -> Iterator[Cluster]:
    c = Cluster(sentinels.url, new_namespace(),
                {"sentinel_master": sentinels.master_name, "queues": "default",
                 "connect_timeout_s": str(CONNECT_TIMEOUT_S)},
                env={"TEST_EVIDENCE_URL": redis_url})  # the handlers' evidence
    c.start_workers({"concurrency": 2})
    yield c
    c.close()


@pytest.fixture(scope="module")
def beat(cluster: Cluster, sentinels: SentinelSet) -> Iterator[BeatProcess]:
    process = BeatProcess(cluster.redis_url, cluster.namespace,
                          env={**sentinels.env, "PYTHONPATH": str(ROOT)}).start()
    yield process
    process.stop()


def runs(bq: BOQueue, name: str) -> int:
    return len(bq.records.tagged(f"schedule:{name}"))


def test_a_sentinel_url_without_the_masters_name_is_refused(sentinels: SentinelSet) -> None:
    with pytest.raises(ConfigurationError, match="BO_QUEUE_SENTINEL_MASTER"):
        BOQueue(redis_url=sentinels.url, namespace="nomaster")


def test_tasks_run_through_sentinel_sync_and_asyncio(cluster: Cluster) -> None:
    bq = cluster.producer()
    assert bq.submit("t.echo", {"x": 1}).get(timeout=30) == {"x": 1}

    async def main() -> object:
        async with AsyncBOQueue(settings=bq.settings) as aq:
            handle = await aq.submit("t.echo", {"x": 2})
            return await handle.get(timeout=30)

    assert asyncio.run(main()) == {"x": 2}


def test_health_and_status_name_the_master_and_its_replicas(
    cluster: Cluster, sentinels: SentinelSet, beat: BeatProcess
) -> None:
    bq = cluster.producer()
    master = f"127.0.0.1:{sentinels.master_port()}"
    replicas = sorted(f"127.0.0.1:{s.port}" for s in sentinels.servers
                      if f"127.0.0.1:{s.port}" != master)
    wait_until(lambda: check_health(bq.monitor).ok, 30, what="a healthy deployment")
    [check] = [c for c in check_health(bq.monitor).checks if c.name == "replication"]
    expected = (f"master {master}, replicas: {', '.join(replicas)} "
                f"(sentinel {sentinels.master_name})")
    assert check.ok and check.detail == expected
    assert f"redis {expected}" in render_status(bq.monitor, width=200).splitlines()


def test_flowers_broker_view_counts_queued_messages_through_sentinel(cluster: Cluster) -> None:
    from flower.utils.broker import Broker  # type: ignore[import-untyped]

    bq = cluster.producer()
    app = bq.app
    probe = bq.keys.broker_prefix + "probe"  # a queue list no worker consumes
    bq.redis.lpush(probe, "a", "b", "c")

    async def lengths() -> object:
        # as Flower's broker view builds it (flower.views.BaseHandler.get_broker)
        with app.connection() as conn:
            url = conn.as_uri(include_password=True)
        broker = Broker(url, broker_options=app.conf.broker_transport_options,
                        broker_use_ssl=app.conf.broker_use_ssl)
        try:
            return await broker.queues(["probe"])
        finally:  # Flower closes its master client, not its clients of the sentinels
            for each in broker.redis.connection_pool.sentinel_manager.sentinels:
                await each.aclose()

    try:
        assert asyncio.run(lengths()) == [{"name": "probe", "messages": 3}]
    finally:
        bq.redis.delete(probe)


def test_a_plain_redis_reports_its_role_and_replicas(sentinels: SentinelSet) -> None:
    replica = sentinels.servers[1]  # replication() on a plain URL reads INFO
    for server, role in ((sentinels.servers[0], "master"), (replica, "replica")):
        settings = Settings(redis_url=server.url)
        with redis_client(settings) as client:
            found = replication(settings, client)
        if role == "master":
            assert found.master == f"127.0.0.1:{server.port}"
            assert sorted(found.replicas) == sorted(
                f"127.0.0.1:{s.port}" for s in sentinels.servers[1:])
        else:
            assert found.master == f"127.0.0.1:{sentinels.servers[0].port}"
            assert found.source == f"INFO replication: 127.0.0.1:{replica.port} is a replica"


def test_the_workers_transport_acks_after_a_dropped_connection_via_the_sentinels(
    sentinels: SentinelSet,
) -> None:
    # bo_queue.core.transport: a task that ends after its channel closed is acknowledged
    # through a client of its own, which must find the master, not a sentinel
    with Connection(sentinels.url, transport="bo_queue.core.transport:SentinelTransport",
                    transport_options={"master_name": sentinels.master_name}) as conn:
        channel = conn.channel()
        client = channel.client_after_close()
        try:
            assert client.info("replication")["role"] == "master"
            assert client.connection_pool.get_master_address() == (
                "127.0.0.1", sentinels.master_port())
        finally:
            client.connection_pool.disconnect()
            for each in client.connection_pool.sentinel_manager.sentinels:
                each.close()
            channel.close()


def test_beat_runs_schedules_through_sentinel(cluster: Cluster, beat: BeatProcess) -> None:
    bq = cluster.producer()
    bq.schedules.add("tick", "t.echo", {"tick": True}, every=1)
    wait_until(lambda: runs(bq, "tick") >= 2, 30, what="two runs of the schedule")
    assert [s.name for s in bq.schedules.list()] == ["tick"]


def test_after_a_failover_everything_works_on_the_new_master_without_a_restart(
    cluster: Cluster, sentinels: SentinelSet, beat: BeatProcess
) -> None:
    bq = cluster.producer()
    if "tick" not in {s.name for s in bq.schedules.list()}:
        bq.schedules.add("tick", "t.echo", {"tick": True}, every=1)
    old = sentinels.kill_master()
    refused, slowest = 0, 0.0
    while sentinels.master_port() in (None, old):
        start = time.monotonic()
        try:
            bq.submit("t.echo", {"during": True})
        except BrokerUnavailableError:
            refused += 1
        slowest = max(slowest, time.monotonic() - start)
    new = sentinels.wait_failover(old)
    assert refused > 0  # the master was gone for a while
    assert slowest < CONNECT_TIMEOUT_S + 1.0  # refused at once, never a hang

    # the same producer, worker and beat, on the new master
    assert bq.submit("t.echo", {"after": True}).get(timeout=60) == {"after": True}
    before = runs(bq, "tick")
    wait_until(lambda: runs(bq, "tick") >= before + 2, 60, what="the schedule after failover")
    report = check_health(bq.monitor)
    [check] = [c for c in report.checks if c.name == "replication"]
    # the master the sentinels name now: on a loaded machine (quick down-after times) they
    # may have failed over once more since `new`, never back to the killed one
    now = sentinels.master_port()
    assert now != old and check.ok and check.detail.startswith(f"master 127.0.0.1:{now},"), (
        new, now, check.detail)
