"""Test harness: a real redis-server on a free port for the session, and real worker
processes (`bo-queue worker`) that the tests start themselves. Nothing here touches a
Redis the machine may already run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from bo_queue import BOQueue
from bo_queue.local import RedisServer, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = "tests.integration.handlers"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def evidence(redis_url: str) -> Iterator[redis.Redis]:
    """What the test handlers wrote (see tests/integration/handlers.py)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def new_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@dataclass
class Cluster:
    """A namespace with its own workers, and a producer facade for it."""

    redis_url: str
    namespace: str
    settings: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    # Workers that serve `bo` import Ax before they fork (several seconds): only where needed.
    queues: tuple[str, ...] = ("default",)
    bq: BOQueue | None = None

    def producer(self) -> BOQueue:
        if self.bq is None:
            overrides = {k.lower(): v for k, v in self.settings.items()}
            self.bq = BOQueue(redis_url=self.redis_url, namespace=self.namespace, **overrides)
        return self.bq

    def add_worker(self, concurrency: int = 1, name: str | None = None, start: bool = True,
                   imports: tuple[str, ...] = (HANDLERS,), queues: tuple[str, ...] | None = None,
                   **kwargs: object) -> WorkerProcess:
        name = name or f"{self.namespace}-{len(self.workers) + 1}"
        env = {"PYTHONPATH": str(ROOT), "TEST_WORKER_NAME": name}
        env.update({f"BO_QUEUE_{k.upper()}": v for k, v in self.settings.items()})
        worker = WorkerProcess(
            self.redis_url, self.namespace, concurrency=concurrency, imports=imports,
            name=name, env=env, queues=queues or self.queues, **kwargs,  # type: ignore[arg-type]
        )
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def close(self) -> None:
        # side by side: each waits up to 5 s for what it runs (a task a test left blocked
        # is killed after that)
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda worker: worker.stop(timeout=5), self.workers))
        if self.bq is not None:
            self.bq.close()


def make_cluster(redis_url: str, workers: int, concurrency: int,
                 queues: tuple[str, ...] = ("default",), **settings: str) -> Cluster:
    cluster = Cluster(redis_url, new_namespace(), settings, queues=queues)
    try:
        started = [cluster.add_worker(concurrency, start=False) for _ in range(workers)]
        for worker in started:  # start them side by side: each takes a couple of seconds
            worker.start(wait=0)
        for worker in started:
            worker.wait_ready()
    except BaseException:
        cluster.close()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    """Two workers of concurrency 2, shared by the tests of one module."""
    c = make_cluster(redis_server.url, workers=2, concurrency=2)
    yield c
    c.close()


@pytest.fixture
def bq(cluster: Cluster) -> BOQueue:
    return cluster.producer()


@pytest.fixture(autouse=True)
def _no_default_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine may run a Redis on 6379; a test that forgot to point at ours must fail,
    not quietly use it."""
    if "BO_QUEUE_REDIS_URL" not in os.environ:
        monkeypatch.setenv("BO_QUEUE_REDIS_URL", "redis://127.0.0.1:1/0")
