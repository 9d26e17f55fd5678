"""BO_QUEUE_REPLICA_ACKS against a real primary and replica: with the replica attached,
submits, study reports and saved state, and a worker's result and record are on the
replica when the call returns; with it detached, a submit raises ReplicaAckError after
about the timeout and returns no handle; with 0 acks nothing waits."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

import tests.integration.handlers  # noqa: F401  (t.echo, known to the producer)
from bo_queue import (
    AsyncBOQueue,
    BOQueue,
    FileStorage,
    Objective,
    Range,
    ReplicaAckError,
    TaskState,
    ValidationError,
)
from bo_queue.studies.models import Trial
from bo_queue.studies.storage import StudyState
from bo_queue.testing import RedisServer, wait_until
from tests.conftest import Cluster, new_namespace

TIMEOUT_S = 0.5  # where the replica is gone: how long a write waits for it
ACKS = {"replica_acks": 1, "replica_ack_timeout_s": TIMEOUT_S}
# where it is up: ample, so that a busy machine that keeps the replica from its core for
# a moment fails no write (an acknowledgement takes well under a millisecond otherwise)
SAFE_ACKS = {"replica_acks": 1, "replica_ack_timeout_s": 5.0}
WORKER_ACKS = {"replica_acks": 1, "replica_ack_timeout_s": 3.0}  # both, on one worker


class Replicated:
    """A primary and one replica (REPLICAOF), each a redis-server on a free port."""

    def __init__(self) -> None:
        self.primary = RedisServer().start()
        self.replica = RedisServer().start()
        self.on_primary = redis.Redis(port=self.primary.port, decode_responses=True)
        self.on_replica = redis.Redis(port=self.replica.port, decode_responses=True)
        # a (re)attached replica syncs at once, not after the default 5 s for others
        self.on_primary.config_set("repl-diskless-sync-delay", 0)
        self.attach()

    def attach(self) -> None:
        self.on_replica.replicaof("127.0.0.1", self.primary.port)
        wait_until(lambda: self.on_replica.info("replication").get("master_link_status") == "up"
                   and self.on_primary.info("replication")["connected_slaves"] == 1,
                   20, what="the replica's link to the primary")
        # online and acknowledging: a write it confirms (a replica that just synced
        # counts only once its first acknowledgement arrived)
        self.on_primary.incr("probe")
        acked = self.on_primary.execute_command("WAIT", 1, 10_000)
        assert acked == 1, "the attached replica acknowledged no write in 10 s"

    def detach(self) -> None:
        """The replica stops replicating: the primary has none left to acknowledge."""
        self.on_replica.replicaof("NO", "ONE")
        wait_until(lambda: self.on_primary.info("replication")["connected_slaves"] == 0,
                   10, what="the primary to see its replica go")

    def waits(self) -> int:
        """How many WAITs the primary has run."""
        stats = self.on_primary.info("commandstats").get("cmdstat_wait") or {}
        return int(stats.get("calls", 0))

    def close(self) -> None:
        self.on_primary.close()
        self.on_replica.close()
        self.replica.close()
        self.primary.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Replicated]:
    pair = Replicated()
    yield pair
    pair.close()


@pytest.fixture
def replicated(servers: Replicated) -> Iterator[Replicated]:
    """The pair with the replica attached, before and after the test."""
    if servers.on_primary.info("replication")["connected_slaves"] == 0:
        servers.attach()
    yield servers
    if servers.on_primary.info("replication")["connected_slaves"] == 0:
        servers.attach()


def producer(pair: Replicated, **settings: object) -> BOQueue:
    return BOQueue(redis_url=pair.primary.url, namespace=new_namespace(), **settings)


def test_with_the_replica_up_a_submit_is_on_the_replica_when_it_returns(
    replicated: Replicated,
) -> None:
    with producer(replicated, **SAFE_ACKS) as bq:
        before = replicated.waits()
        handle = bq.submit("t.echo", {"n": 1})
        # no wait on our side: the replica already has the record and the message
        assert replicated.on_replica.hget(bq.keys.task(handle.id), "state") == TaskState.QUEUED
        handles = bq.submit_many([{"handler": "t.echo", "payload": {"n": i}} for i in range(3)])
        assert all(replicated.on_replica.exists(bq.keys.task(h.id)) for h in handles)
        assert replicated.waits() == before + 2  # one WAIT per submit


def test_with_the_replica_gone_a_submit_raises_and_returns_no_handle(
    replicated: Replicated,
) -> None:
    with producer(replicated, **ACKS) as bq:
        replicated.detach()
        started = time.monotonic()
        with pytest.raises(ReplicaAckError) as caught:
            bq.submit_many([{"handler": "t.echo", "id": "acks-lost-1", "payload": {}}])
        waited = time.monotonic() - started
        assert (caught.value.acked, caught.value.required) == (0, 1)
        assert "0 of the 1 required replica(s)" in str(caught.value)
        assert "may not survive a failover" in str(caught.value)
        assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 5  # it waited for the timeout, once
        # The write is on the primary (QUEUED): the same id again says it is there.
        assert bq.info("acks-lost-1").state is TaskState.QUEUED
        with pytest.raises(ValidationError, match="already in use"):
            bq.submit_many([{"handler": "t.echo", "id": "acks-lost-1", "payload": {}}])
        with pytest.raises(ReplicaAckError):
            bq.submit("t.echo", {})


def test_without_replica_acks_nothing_waits(replicated: Replicated) -> None:
    with producer(replicated) as bq:
        replicated.detach()
        before = replicated.waits()
        handle = bq.submit("t.echo", {})
        bq.submit_many([{"handler": "t.echo", "payload": {}}])
        assert bq.info(handle.id).state is TaskState.QUEUED
        assert replicated.waits() == before


def test_async_submits_wait_for_the_replica_too(replicated: Replicated) -> None:
    async def scenario() -> None:
        url = replicated.primary.url
        async with AsyncBOQueue(redis_url=url, namespace=new_namespace(), **SAFE_ACKS) as aq:
            handle = await aq.submit("t.echo", {"n": 1})
            [other] = await aq.submit_many([{"handler": "t.echo", "payload": {}}])
            for task_id in (handle.id, other.id):
                assert replicated.on_replica.exists(aq.keys.task(task_id))
        replicated.detach()
        async with AsyncBOQueue(redis_url=url, namespace=new_namespace(), **ACKS) as aq:
            with pytest.raises(ReplicaAckError):
                await aq.submit("t.echo", {})
            with pytest.raises(ReplicaAckError):
                await aq.submit_many([{"handler": "t.echo", "payload": {}}])

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def acked_cluster(servers: Replicated) -> Iterator[Cluster]:
    """A worker (and its producer) with replica_acks=1, for the tests of this module."""
    cluster = Cluster(servers.primary.url, new_namespace(),
                      {k: str(v) for k, v in WORKER_ACKS.items()})
    cluster.add_worker()
    yield cluster
    cluster.close()


def test_a_worker_writes_the_result_and_record_before_the_replica_is_behind(
    replicated: Replicated, acked_cluster: Cluster,
) -> None:
    bq = acked_cluster.producer()
    handle = bq.submit("t.echo", {"n": 7})
    assert handle.get(timeout=30) == {"n": 7}
    key = bq.keys.task(handle.id)
    # the record itself (info() would show the stored result over it a moment sooner)
    wait_until(lambda: replicated.on_primary.hget(key, "state") == TaskState.SUCCEEDED, 10,
               what="the record's end")
    assert replicated.on_replica.hget(key, "state") == TaskState.SUCCEEDED
    assert "acknowledged the write" not in acked_cluster.workers[0].log()


def test_a_worker_says_so_when_the_replica_did_not_acknowledge_a_result(
    replicated: Replicated, acked_cluster: Cluster,
) -> None:
    bq = acked_cluster.producer()
    gate = f"evidence:{new_namespace()}"
    handle = bq.submit("t.gate", {"key": gate})
    wait_until(lambda: replicated.on_primary.exists(gate + ":entered"), 30,
               what="the task to start")
    replicated.detach()
    replicated.on_primary.set(gate, 1)  # the task returns: its end is not acknowledged
    assert handle.get(timeout=30) == "opened"
    wait_until(lambda: replicated.on_primary.hget(bq.keys.task(handle.id), "state")
               == TaskState.SUCCEEDED, 10, what="the record's end")
    worker = acked_cluster.workers[0]
    wait_until(lambda: "may not survive a failover" in worker.log(), 10,
               what="the worker's error about the unacknowledged end")
    assert f"task {handle.id} went {TaskState.SUCCEEDED.value}" in worker.log()


def test_study_reports_and_saved_state_wait_for_the_replica(
    replicated: Replicated, acked_cluster: Cluster,
) -> None:
    bq = acked_cluster.producer()  # its worker published the study step's handler
    with tempfile.TemporaryDirectory() as folder:
        study = bq.studies.create(name="acks", parameters=[Range("x", 0.0, 1.0)],
                                  objectives=[Objective("loss", minimize=True)])
        store = bq.studies.store
        assert replicated.on_replica.exists(store.meta(study.id))
        # a saved state with one running trial, brought back from a file (store.save)
        files = FileStorage(folder)
        bq.studies.persist(study.id, files)
        state = files.load(study.id)
        trial = Trial(index=0, params={"x": 0.5}, created_at=datetime.now(UTC))
        files.save(StudyState(state.study, [trial], None))
        bq.studies.load(study.id, files)
        assert replicated.on_replica.hexists(store.trials_key(study.id), "0")
        assert bq.studies.report(study.id, 0, {"loss": 0.25}) is True
        assert replicated.on_replica.hexists(store.reported_key(study.id), "0")
        replicated.detach()
        with BOQueue(redis_url=replicated.primary.url, namespace=acked_cluster.namespace,
                     **ACKS) as short:
            with pytest.raises(ReplicaAckError):
                short.studies.load(study.id, files)
            with pytest.raises(ReplicaAckError):
                short.studies.store.push_result(study.id, {"index": 0, "values": {"loss": 0.2}})


def test_a_primary_lost_during_the_wait_is_an_unknown_acknowledgement() -> None:
    """The write ran, then the connection broke while WAIT blocked: the submit raises
    ReplicaAckError (how many acknowledged is unknown) and is not sent again."""
    with RedisServer() as primary, BOQueue(redis_url=primary.url, namespace=new_namespace(),
                                           replica_acks=1, replica_ack_timeout_s=5) as bq:
        watcher = redis.Redis(port=primary.port)
        outcome: list[BaseException] = []

        def submit() -> None:
            try:
                bq.submit("t.echo", {})
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=submit)
        thread.start()
        # no replica: the WAIT blocks for its 5 s, and the primary dies meanwhile. Blocked,
        # and the script's reply written out (an empty output buffer): Redis writes replies
        # after the commands of its loop, so a kill just after the WAIT blocked could
        # otherwise lose the script's reply too, and the write would seem not to have run.
        def waiting() -> bool:
            return any("b" in c["flags"] and c["obl"] == "0" and c["oll"] == "0"
                       for c in watcher.client_list())

        wait_until(waiting, 10, what="the submit's WAIT to block, its script's reply sent")
        watcher.close()
        primary.kill()
        thread.join(10)
        [error] = outcome
        assert isinstance(error, ReplicaAckError)
        assert error.acked is None
        assert "only an unknown number of the 1 required" in str(error)
