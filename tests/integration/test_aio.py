"""AsyncBOQueue on a real Redis with real workers: submits and gets that never stall the
event loop, a cancelled get(), and every error of the sync facade's producer calls, the
same from the async one."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from bo_queue import (
    AsyncBOQueue,
    AsyncTaskHandle,
    BOQueue,
    BOQueueError,
    Objective,
    Range,
    Strategy,
    StudyStatus,
    TaskCancelledError,
    TaskState,
    TrialStatus,
    UnknownTaskError,
    ValidationError,
    handler,
)
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster, new_namespace

STALL_S = 0.1  # the longest the loop may go without running the ticker


@handler("t.aio_local")
def aio_local(payload: dict[str, Any], ctx: Any) -> None:
    """Declared here: a namespace with no worker knows it (from this process's registry)."""


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=2, concurrency=2)
    yield c
    c.close()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def aq_of(cluster: Cluster, **options: Any) -> AsyncBOQueue:
    return AsyncBOQueue(redis_url=cluster.redis_url, namespace=cluster.namespace, **options)


def test_submit_get_info_and_a_batch(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with aq_of(cluster) as aq:
            handle = await aq.submit("t.echo", {"x": 1}, priority="high", tags=("aio",),
                                     name="first", metadata={"m": 1})
            assert isinstance(handle, AsyncTaskHandle)
            assert await handle.get(timeout=30) == {"x": 1}
            for _ in range(100):  # the worker ends the record just after the result
                if await handle.state() is TaskState.SUCCEEDED:
                    break
                await asyncio.sleep(0.05)
            info = await aq.info(handle.id)
            assert (info.state, info.tags, info.name, info.metadata) == (
                TaskState.SUCCEEDED, ("aio",), "first", {"m": 1})
            assert await handle.ready()
            many = await aq.submit_many({"handler": "t.echo", "payload": {"i": i}}
                                        for i in range(50))
            results = await asyncio.gather(*(h.get(timeout=60) for h in many))
            assert results == [{"i": i} for i in range(50)]
            # the same record the sync facade reads
            assert cluster.producer().info(many[0].id).handler == "t.echo"

    run(scenario())


class BlockingIO:
    """Records every blocking socket call made on the loop's thread (asyncio's own
    sockets are non-blocking: timeout 0.0; a sync redis-py client's are not)."""

    CALLS = ("recv", "recv_into", "send", "sendall", "connect")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[str] = []
        self.thread = threading.get_ident()
        for name in self.CALLS:
            original = getattr(socket.socket, name)
            monkeypatch.setattr(socket.socket, name, self._watch(name, original))

    def _watch(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self.thread and sock.gettimeout() != 0.0:
                self.seen.append(name)
            return call(sock, *args, **kwargs)

        return watched


def test_the_loop_never_stalls_under_hundreds_of_submits_and_gets(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a service: requests arrive one per turn of the loop, each submits a task and
    awaits its result, hundreds in flight at once (the tasks wait at a gate until all
    are in); a ticker on the same loop is never held up for 100 ms, and nothing on the
    loop's thread makes a blocking socket call. A batch's gets wait alongside.

    The 100 ms is held on the loop thread's CPU time between two ticks (what the facade's
    own work on the loop costs). Wall time also counts the moments the OS gives both
    cores to other processes (2 cores, `make test` runs two files at once, and their
    workers): how many gaps pass 100 ms there is the machine's load, not the facade's,
    so wall time is only held to 1 s; a blocking wait shows in `blocking.seen`."""
    gate = f"gate-{uuid.uuid4().hex}"
    opener = redis.Redis.from_url(cluster.redis_url)

    async def scenario(
        blocking: BlockingIO,
    ) -> tuple[list[tuple[float, float]], list[Any], int]:
        async with aq_of(cluster) as aq:
            await (await aq.submit("t.echo", {})).get(timeout=30)
            # the pools' connections set up, as in a service that has been up a while
            await asyncio.gather(*(aq.info(f"warm-{i}") for i in range(50)),
                                 return_exceptions=True)
            await asyncio.gather(*(aq.results.fetch(f"warm-{i}") for i in range(50)))
            gaps: list[tuple[float, float]] = []  # (wall, the loop thread's CPU) per tick
            stop = asyncio.Event()
            flight = [0, 0]  # in flight now, most at once

            async def ticker() -> None:
                last, last_cpu = time.perf_counter(), time.thread_time()
                while not stop.is_set():
                    await asyncio.sleep(0.005)
                    now, cpu = time.perf_counter(), time.thread_time()
                    gaps.append((now - last, cpu - last_cpu))
                    last, last_cpu = now, cpu

            async def request(i: int) -> Any:
                flight[0] += 1
                flight[1] = max(flight)
                try:
                    handle = await aq.submit("t.gate", {"key": gate, "i": i})
                    return await handle.get(timeout=120)
                finally:
                    flight[0] -= 1

            blocking.seen.clear()
            tick = asyncio.create_task(ticker())
            batch = await aq.submit_many({"handler": "t.echo", "payload": {"i": -i}}
                                         for i in range(1, 101))
            gets, requests = [], []
            for i in range(300):
                requests.append(asyncio.create_task(request(i)))
                if i < len(batch):
                    gets.append(asyncio.create_task(batch[i].get(timeout=120)))
                await asyncio.sleep(0)  # the next request arrives at the next turn
            while flight[0] < 300:  # every request in and waiting
                await asyncio.sleep(0.01)
            await asyncio.to_thread(opener.set, gate, 1)  # (the test's own client: off the loop)
            results = await asyncio.gather(*requests, *gets)
            stop.set()
            await tick
            return gaps, results, flight[1]

    blocking = BlockingIO(monkeypatch)
    # The collector's full passes over this process's heap (pytest, Celery, every test
    # module: 30-120 ms each) are not the facade's; freeze them out, as a service would
    # after start-up (gc.freeze), so that what is measured is the facade's own.
    gc.collect()
    gc.freeze()
    try:
        gaps, results, most = run(scenario(blocking))
    finally:
        gc.unfreeze()
    monkeypatch.undo()
    opener.close()
    assert blocking.seen == []
    assert results == ["opened"] * 300 + [{"i": -i} for i in range(1, 101)]
    assert most == 300  # all at once, not one after another
    assert len(gaps) > 10  # the ticker did run all along
    wall, cpu = [g[0] for g in gaps], [g[1] for g in gaps]
    assert max(cpu) < STALL_S, f"the loop computed for {max(cpu) * 1000:.0f} ms without a tick"
    assert max(wall) < 1.0, f"a tick late by {max(wall):.2f} s"


def test_cancelling_an_awaiting_get_stops_the_wait_not_the_task(cluster: Cluster) -> None:
    results = redis.Redis.from_url(cluster.redis_url)

    async def scenario() -> None:
        async with aq_of(cluster) as aq:
            handle = await aq.submit("t.echo", {}, countdown=600)  # held: no result soon
            waiting = asyncio.create_task(handle.get())
            channel = aq.results.key(handle.id)
            for _ in range(200):
                if results.pubsub_numsub(channel)[0][1] == 1:
                    break
                await asyncio.sleep(0.02)
            assert results.pubsub_numsub(channel)[0][1] == 1  # it waits on pub/sub
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            for _ in range(200):
                if results.pubsub_numsub(channel)[0][1] == 0:
                    break
                await asyncio.sleep(0.02)
            assert results.pubsub_numsub(channel)[0][1] == 0
            assert await handle.state() is TaskState.PENDING  # the task is untouched
            # a get awaiting a cancel wakes with it
            again = asyncio.create_task(handle.get(timeout=30))
            await asyncio.sleep(0.1)
            assert await handle.cancel() is TaskState.CANCELLED
            with pytest.raises(BOQueueError, match="cancelled"):
                await again

    run(scenario())
    results.close()


# -- cancel, cancel_tag, tasks, failed, retry: on the loop, never in a thread ----------------


def _no_thread(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a call of AsyncBOQueue left the loop (a thread, or a sync socket)")


def _meta_of(keys: redis.Redis, key: str) -> dict[str, Any]:
    """A stored result's meta, less what differs by nature (its id, its time)."""
    raw = keys.get(key)
    assert raw is not None, key
    meta = json.loads(raw)
    assert meta.pop("date_done") and meta.pop("task_id")
    return dict(meta)


def test_cancel_listings_and_retry_never_leave_the_loop(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    bq = cluster.producer()
    keys = redis.Redis.from_url(cluster.redis_url)
    tag = f"native-{uuid.uuid4().hex}"
    log = f"l-{uuid.uuid4().hex}"
    failing = [bq.submit("t.node", {"log": log, "fail": True}, tags=(tag,)) for _ in range(2)]
    done = bq.submit("t.echo", {"done": 1}, tags=(tag,))
    for h in failing:
        wait_until(lambda h=h: bq.info(h.id).state is TaskState.FAILED, timeout=30)
    assert done.get(timeout=30) == {"done": 1}
    wait_until(lambda: bq.info(done.id).state is TaskState.SUCCEEDED, timeout=10)
    # Celery's own mark_as_revoked, to compare what the steps write with
    bq.app.backend.mark_as_revoked("celery-own", "cancelled")
    celery_meta = _meta_of(keys, bq.results.key("celery-own"))
    sync_held = bq.submit("t.echo", {}, countdown=600, tags=(tag,))
    assert bq.cancel(sync_held.id) is TaskState.CANCELLED

    monkeypatch.setattr(asyncio, "to_thread", _no_thread)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "run_in_executor", _no_thread)

    async def scenario() -> None:
        async with aq_of(cluster) as aq:
            # listings: the sync facade's, for the same state
            assert await aq.failed() == bq.failed()
            assert await aq.tasks(tag=tag) == bq.tasks(tag=tag)
            assert await aq.tasks("FAILED", tag=tag, limit=1) == bq.tasks(
                "FAILED", tag=tag, limit=1)
            assert {t.id for t in await aq.tasks(TaskState.FAILED, tag=tag)} == {
                h.id for h in failing}
            assert await aq.tasks(handler="t.echo", tag=tag) == bq.tasks(
                handler="t.echo", tag=tag)
            # a failed task retried once; a second retry is the sync facade's error
            again = await aq.retry(failing[0].id)
            assert isinstance(again, AsyncTaskHandle)
            assert bq.info(failing[0].id).retried_as == again.id
            assert failing[0].id not in {t.id for t in await aq.failed(limit=1000)}
            expected = outcome_of(lambda: bq.retry(failing[0].id))
            assert expected[0] is ValidationError and "retried already" in expected[1]
            assert await _async_outcome(aq.retry(failing[0].id)) == expected
            with pytest.raises(BOQueueError, match="fails as asked"):
                await again.get(timeout=30)
            info = await aq.info(again.id)
            assert (info.handler, info.tags) == ("t.node", (tag,))
            # only FAILED tasks retry, as in sync
            assert await _async_outcome(aq.retry(done.id)) == outcome_of(
                lambda: bq.retry(done.id))
            # cancel: an unknown id, an ended task, a queued one
            expected = outcome_of(lambda: bq.cancel("no-such-task"))
            assert expected[0] is UnknownTaskError
            assert await _async_outcome(aq.cancel("no-such-task")) == expected
            assert await aq.cancel(done.id) is TaskState.SUCCEEDED
            held = await aq.submit("t.echo", {}, countdown=600, tags=(tag,))
            assert await held.cancel() is TaskState.CANCELLED
            assert await held.state() is TaskState.CANCELLED
            expected = outcome_of(lambda: bq.handle(held.id).get(timeout=5))
            assert expected == (TaskCancelledError, f"task {held.id} was cancelled: cancelled")
            assert await _async_outcome(held.get(timeout=5)) == expected
            assert keys.zscore(bq.keys.delayed, held.id) is None  # its held send dropped
            # what Celery's mark_as_revoked writes, from either facade
            assert _meta_of(keys, aq.results.key(held.id)) == celery_meta
            assert _meta_of(keys, aq.results.key(sync_held.id)) == celery_meta
            # a cascade: its subtask and its dependent, the dependent woken
            parent = await aq.submit("t.echo", {}, countdown=600)
            child = await aq.submit("t.echo", {}, countdown=600, parent_id=parent.id)
            dependent = await aq.submit("t.echo", {}, depends_on=[parent.id])
            assert await aq.cancel(parent.id, reason="stop") is TaskState.CANCELLED
            assert (await child.info()).error == f"ancestor {parent.id} cancelled"
            assert await dependent.state() is TaskState.CANCELLED
            with pytest.raises(TaskCancelledError):
                await dependent.get(timeout=5)
            # cancel_tag: the unfinished ones carrying the tag
            tagged = [await aq.submit("t.echo", {}, countdown=600, tags=(f"{tag}-x",))
                      for _ in range(3)]
            assert await aq.cancel_tag(f"{tag}-x") == sorted(h.id for h in tagged)
            assert await aq.cancel_tag(f"{tag}-x") == bq.cancel_tag(f"{tag}-x") == []
            assert await _async_outcome(aq.cancel_tag("")) == outcome_of(
                lambda: bq.cancel_tag(""))
            for h in tagged:
                assert (await h.info()).error == f"tag {tag + '-x'!r} cancelled"

    run(scenario())
    keys.close()


def test_terminate_is_the_one_cancel_in_a_thread(
    cluster: Cluster, evidence: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cancel(terminate=True) of a running task: Celery's remote control (a kombu
    broadcast) in a worker thread, the rest of the cancel on the loop."""
    threaded: list[Any] = []
    to_thread = asyncio.to_thread

    async def counted(call: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        threaded.append(call)
        return await to_thread(call, *args, **kwargs)

    async def scenario() -> None:
        async with aq_of(cluster) as aq:
            h = await aq.submit("t.sleep", {"seconds": 60})
            for _ in range(400):
                if evidence.exists(f"evidence:started:{h.id}"):
                    break
                await asyncio.sleep(0.05)
            monkeypatch.setattr(asyncio, "to_thread", counted)
            assert await aq.cancel(h.id, terminate=True) is TaskState.RUNNING
            assert len(threaded) == 1
            monkeypatch.setattr(asyncio, "to_thread", to_thread)
            with pytest.raises(TaskCancelledError):
                await h.get(timeout=15)

    run(scenario())


# -- every error of the sync facade, from the async one ----------------------------------------

Sync = Callable[[BOQueue], Any]
Async = Callable[[AsyncBOQueue], Awaitable[Any]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twins(cluster: Cluster) -> dict[str, tuple[Sync, Async]]:
    bq = cluster.producer()
    failing = bq.submit("t.node", {"log": f"l-{uuid.uuid4().hex}", "fail": True})
    held = bq.submit("t.echo", {}, countdown=600)
    bq.cancel(held.id)
    # settled before the comparisons: a task that starts takes its outbox entry away
    wait_until(lambda: bq.info(failing.id).state is TaskState.FAILED, timeout=30)
    past = datetime.now(UTC) - timedelta(hours=1)

    def both(name: str, *args: Any, **kwargs: Any) -> tuple[Sync, Async]:
        return (lambda bq: getattr(bq, name)(*args, **kwargs),
                lambda aq: getattr(aq, name)(*args, **kwargs))

    async def aget(aq: AsyncBOQueue, task_id: str, timeout: float | None) -> Any:
        return await aq.handle(task_id).get(timeout=timeout)

    return {
        "unknown handler": both("submit", "t.nobody_declared_this"),
        "payload not JSON": both("submit", "t.echo", {"x": {1, 2}}),
        "payload not an object": both("submit", "t.echo", [1, 2]),  # type: ignore[arg-type]
        "unknown queue": both("submit", "t.echo", {}, queue="nowhere"),
        "countdown and eta": both("submit", "t.echo", {}, countdown=5,
                                  eta=datetime.now(UTC) + timedelta(hours=1)),
        "eta in the past": both("submit", "t.echo", {}, eta=past),
        "expires before due": both("submit", "t.echo", {}, countdown=10, expires=5),
        "bad priority": both("submit", "t.echo", {}, priority="whenever"),
        "bad retry policy": both("submit", "t.echo", {}, retry={"max_retries": "many"}),
        "time limit too long": both("submit", "t.echo", {}, time_limit=10**6),
        "unknown dependency": both("submit", "t.echo", {}, depends_on=["no-such-task"]),
        "a cycle": both("submit_many", [
            {"handler": "t.echo", "id": "cyc-a", "depends_on": ["cyc-b"]},
            {"handler": "t.echo", "id": "cyc-b", "depends_on": ["cyc-a"]}]),
        "one bad request in a batch": both("submit_many", [
            {"handler": "t.echo"}, {"handler": "t.echo", "payload": {"x": {1}}}]),
        "a batch that is not one": both("submit_many", {"handler": "t.echo"}),
        "a taken id": both("submit_many", [{"handler": "t.echo", "id": failing.id}]),
        "info of an unknown task": both("info", "no-such-task"),
        "info of a bad id": both("info", ""),
        "cancel an unknown task": both("cancel", "no-such-task"),
        "a bad tag": both("cancel_tag", ""),
        "retry an unknown task": both("retry", "no-such-task"),
        "a failed task's result": (lambda bq: bq.handle(failing.id).get(timeout=30),
                                   lambda aq: aget(aq, failing.id, 30)),
        "a cancelled task's result": (lambda bq: bq.handle(held.id).get(timeout=30),
                                      lambda aq: aget(aq, held.id, 30)),
        "a result not there in time": (
            lambda bq: bq.submit("t.echo", {}, countdown=600).get(timeout=0.3),
            lambda aq: _submitted_get(aq, 0.3)),
    }


async def _submitted_get(aq: AsyncBOQueue, timeout: float) -> Any:
    handle = await aq.submit("t.echo", {}, countdown=600)
    return await handle.get(timeout=timeout)


def outcome_of(call: Callable[[], Any]) -> tuple[type[BaseException], str]:
    try:
        call()
    except BOQueueError as exc:
        return type(exc), str(exc)
    raise AssertionError("no error")


def test_every_sync_error_has_its_async_twin(cluster: Cluster) -> None:
    bq = cluster.producer()
    cases = twins(cluster)
    keys = redis.Redis.from_url(cluster.redis_url)

    def written() -> tuple[int, int, int]:
        """What a submit writes: records, outbox entries, held sends."""
        records = sum(1 for _ in keys.scan_iter(match=bq.keys.task("*"), count=1000))
        return records, keys.hlen(bq.keys.outbox), keys.zcard(bq.keys.delayed)

    async def scenario() -> None:
        async with aq_of(cluster) as aq:
            for name, (sync, asynchronous) in cases.items():
                before = written()
                expected = outcome_of(lambda: sync(bq))  # noqa: B023
                assert name.startswith("a result") or written() == before, name
                try:
                    await asynchronous(aq)
                except BOQueueError as exc:
                    got: tuple[type[BaseException], str] = (type(exc), str(exc))
                else:
                    raise AssertionError(f"{name}: no error from the async facade")
                assert got[0] is expected[0], name
                # the same message, but for what differs by nature (a new task's id)
                if name != "a result not there in time":
                    assert got[1] == expected[1], name
                if not name.startswith("a result"):  # bad input: nothing written, either
                    assert written() == before, name

    run(scenario())
    keys.close()


def test_an_expired_task_and_redis_down_too(redis_url: str) -> None:
    namespace = new_namespace()  # no worker serves it: the task expires unstarted
    bq = BOQueue(redis_url=redis_url, namespace=namespace)
    expired = bq.submit("t.aio_local", {}, expires=0.2)
    wait_until(lambda: bq.info(expired.id).state is TaskState.EXPIRED, timeout=10)
    down = f"redis://127.0.0.1:{_free_port()}/0"

    async def scenario() -> None:
        async with AsyncBOQueue(redis_url=redis_url, namespace=namespace) as aq:
            assert outcome_of(lambda: bq.handle(expired.id).get(timeout=5)) == (
                await _async_outcome(aq.handle(expired.id).get(timeout=5)))
        sync_down = BOQueue(redis_url=down, namespace=namespace, connect_timeout_s=0.5)
        async with AsyncBOQueue(redis_url=down, namespace=namespace,
                                connect_timeout_s=0.5) as aq:
            expected = outcome_of(lambda: sync_down.submit("t.aio_local", {}))
            got = await _async_outcome(aq.submit("t.aio_local", {}))
            assert got[0] is expected[0] and "unavailable" in got[1]
            got = await _async_outcome(aq.info("some-task"))
            assert got[0] is expected[0]
        sync_down.close()

    run(scenario())
    bq.close()


async def _async_outcome(call: Awaitable[Any]) -> tuple[type[BaseException], str]:
    try:
        await call
    except BOQueueError as exc:
        return type(exc), str(exc)
    raise AssertionError("no error")


@pytest.fixture(scope="module")
def study_cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=2, queues=("default", "bo"))
    yield c
    c.close()


def _no_sync_redis(aq: AsyncBOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any command of the sync facade underneath (a blocking socket call on the loop)
    fails the test."""
    for client in {id(c): c for c in (aq.sync.redis, aq.sync.raw_redis)}.values():
        monkeypatch.setattr(client.connection_pool, "get_connection", _no_thread)


def test_a_study_asked_and_told_from_asyncio_never_leaves_the_loop(
    study_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    bq = study_cluster.producer()
    monkeypatch.setattr(asyncio, "to_thread", _no_thread)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "run_in_executor", _no_thread)

    async def scenario() -> None:
        async with aq_of(study_cluster) as aq:
            _no_sync_redis(aq, monkeypatch)
            study = await aq.studies.create(
                name="aio", parameters=[Range("x", 0.0, 1.0)], objectives=[Objective("loss")],
                strategy=Strategy(initial_trials=3, max_trials=3, seed=0),
                metadata={"owner": "aio"})
            assert await aq.studies.get(study.id) == bq.studies.get(study.id)
            first, second = await aq.studies.suggest(study.id, count=2, timeout=120)
            assert {first.status, second.status} == {TrialStatus.RUNNING}
            assert await aq.studies.report_intermediate(
                study.id, first.index, 1, {"loss": 0.9}) is False  # no rule: never stops
            assert [step for step, _ in bq.studies.intermediate(study.id, first.index)] == [1]
            assert await aq.studies.report(study.id, first.index, {"loss": first.params["x"]})
            assert not await aq.studies.report(  # the same again: a no-op
                study.id, first.index, {"loss": first.params["x"]})
            assert await aq.studies.report_failure(study.id, second.index, "the rig broke")
            told = 1
            while told < 3:
                for trial in await aq.studies.suggest(study.id, timeout=120):
                    assert await aq.studies.report(study.id, trial.index,
                                                   {"loss": trial.params["x"]})
                    told += 1
            done = await aq.studies.wait(study.id, timeout=120)
            assert done.status is StudyStatus.COMPLETED and done.completed_trials == 3
            trials = await aq.studies.trials(study.id)
            assert trials == bq.studies.trials(study.id)
            assert next(t for t in trials if t.index == second.index).status is TrialStatus.FAILED
            best = await aq.studies.best(study.id)
            assert best == bq.studies.best(study.id)
            assert best is not None and best.values["loss"] == min(
                t.values["loss"] for t in trials if t.status is TrialStatus.COMPLETED)

    run(scenario())


def test_every_sync_study_error_has_its_async_twin(
    study_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    bq = study_cluster.producer()
    x = Range("x", 0.0, 1.0)
    spec: dict[str, Any] = {"name": "twins", "parameters": [x], "objectives": [Objective("loss")],
                            "strategy": Strategy(initial_trials=2, max_trials=2, seed=0)}
    live = bq.studies.create(**spec)
    [told] = bq.studies.suggest(live.id, timeout=120)
    assert bq.studies.report(live.id, told.index, {"loss": 0.5})
    [running] = bq.studies.suggest(live.id, timeout=120)
    paused = bq.studies.create(**spec)
    bq.studies.suggest(paused.id, timeout=120)
    bq.studies.pause(paused.id)
    ended = bq.studies.create(**spec)
    bq.studies.fail(ended.id, "stopped by the test")
    unknown = "0123456789abcdef"
    cases: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
        "get an unknown study": ("get", (unknown,), {}),
        "get a bad id": ("get", ("not/an id",), {}),
        "create with an unknown evaluator": ("create", (), {**spec, "evaluator": "t.nobody"}),
        "create from an unknown study": ("create", (), {**spec, "warm_start_from": [unknown]}),
        "create with a parameter twice": ("create", (), {**spec, "parameters": [x, x]}),
        "suggest none": ("suggest", (live.id, 0), {}),
        "suggest with a bad timeout": ("suggest", (live.id, 1), {"timeout": -1}),
        "suggest from a paused study": ("suggest", (paused.id,), {}),
        "suggest from an ended study": ("suggest", (ended.id,), {}),
        "report an unknown trial": ("report", (live.id, 999, {"loss": 1.0}), {}),
        "report a bad index": ("report", (live.id, -1, {"loss": 1.0}), {}),
        "report no metric of the study": ("report", (live.id, running.index, {"gain": 1.0}), {}),
        "report another result": ("report", (live.id, told.index, {"loss": 0.25}), {}),
        "report to an ended study": ("report", (ended.id, 0, {"loss": 1.0}), {}),
        "report to an unknown study": ("report", (unknown, 0, {"loss": 1.0}), {}),
        "report a failure too long": ("report_failure", (live.id, running.index, "x" * 5000), {}),
        "report a told trial failed": ("report_failure", (live.id, told.index), {}),
        "an intermediate at a bad step": (
            "report_intermediate", (live.id, running.index, -1, {"loss": 1.0}), {}),
        "an intermediate of a told trial": (
            "report_intermediate", (live.id, told.index, 1, {"loss": 1.0}), {}),
        "an intermediate of an unknown trial": (
            "report_intermediate", (live.id, 999, 1, {"loss": 1.0}), {}),
        "best of an unknown study": ("best", (unknown,), {}),
        "wait past its timeout": ("wait", (live.id,), {"timeout": 0.2}),
    }
    before = (bq.studies.trials(live.id), len(bq.studies.list()))
    monkeypatch.setattr(asyncio, "to_thread", _no_thread)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "run_in_executor", _no_thread)

    async def scenario() -> None:
        async with aq_of(study_cluster) as aq:
            _no_sync_redis(aq, monkeypatch)
            for name, (method, args, kwargs) in cases.items():
                expected = outcome_of(
                    lambda: getattr(bq.studies, method)(*args, **kwargs))  # noqa: B023
                got = await _async_outcome(getattr(aq.studies, method)(*args, **kwargs))
                assert got == expected, name

    run(scenario())
    assert (bq.studies.trials(live.id), len(bq.studies.list())) == before  # nothing written
