"""Test harness: a real redis-server on a free port for the session, and real worker
processes (`bo-queue worker`) that the tests start themselves, and a PostgreSQL server
for SQLStorage. Nothing here touches a Redis or PostgreSQL the machine may already run."""

from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from bo_queue import BOQueue
from bo_queue.testing import RedisServer, WorkerProcess, _Process, popen
from tests import forkserver
from tests.reliability import report

if TYPE_CHECKING:
    from tests.integration.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = "tests.integration.handlers"
# the queues of workers that serve studies (they import Ax before they fork: seconds)
STUDY_QUEUES = ("default", "bo", "evaluate")


# The files whose tests spend CPU on Ax (its model fits, in the workers and in process),
# in two groups of 3-5 minutes: `make test` runs each group's files one after another on
# one xdist worker, first, while the other two run the rest, which mostly waits on
# processes and Redis. More of these at once on a 2-core machine only slow each other.
AX_HEAVY = {
    "test_study_moo.py": "ax-1", "test_study_parallel.py": "ax-1", "test_study_sql.py": "ax-1",
    "test_studies.py": "ax-2", "test_study_recovery.py": "ax-2", "test_warm_start.py": "ax-2",
    "test_early_stopping.py": "ax-2",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`: each file is a group of its own (module-scoped clusters
    stay one per file), except the Ax-heavy ones, which share theirs, scheduled first."""
    if getattr(config.option, "dist", "no") != "loadgroup":
        return
    for item in items:
        group = AX_HEAVY.get(item.path.name, str(item.path))
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.path.name not in AX_HEAVY)  # stable: order kept


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controlling process, or a run without xdist
        report.reset()  # this run's reliability figures start afresh


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reliability report once, from the controlling process (bo_queue's
    workers under xdist each append their rows to the same file)."""
    if hasattr(session.config, "workerinput") or not report.has_rows():
        return
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    # RELIABILITY_README=1 (make test-reliability): into docs/reliability.md
    page = os.environ.get("RELIABILITY_README") == "1" and exitstatus == 0
    report.write(machine, page=page)


_STARTED = pytest.StashKey[float]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the end of every worker, beat or Redis log written
    while it ran: a CI run is the only place some failures show, and it keeps no files."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if not rep.failed or _STARTED not in item.stash:
        return
    since = item.stash[_STARTED]
    logs = sorted(Path(tempfile.gettempdir()).glob("bo-queue-*.log"), key=os.path.getmtime)
    for path in [p for p in logs if os.path.getmtime(p) >= since][-6:]:
        text = path.read_text(errors="replace")
        rep.sections.append((f"log {path.name} (last 6000 characters)", text[-6000:]))


@pytest.fixture(scope="session", autouse=True)
def fork_server() -> Iterator[None]:
    """Worker and beat processes forked from one interpreter that has their imports done
    (tests/forkserver.py); `TEST_FORK_SERVER=0` exec's each instead."""
    if not forkserver.enabled():
        yield
        return
    server = forkserver.ForkServer()
    _Process.launch = server.launch  # type: ignore[assignment]
    yield
    _Process.launch = staticmethod(popen)  # type: ignore[assignment]
    server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own (tests/integration/postgres.py), never the
    machine's; `postgres.new_database()` gives each test an empty database."""
    from tests.integration.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


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
    env: dict[str, str] = field(default_factory=dict)  # more environment for its workers

    def producer(self) -> BOQueue:
        if self.bq is None:
            overrides = {k.lower(): v for k, v in self.settings.items()}
            self.bq = BOQueue(redis_url=self.redis_url, namespace=self.namespace, **overrides)
        return self.bq

    def add_worker(self, concurrency: int = 1, name: str | None = None, start: bool = True,
                   imports: tuple[str, ...] = (HANDLERS,), queues: tuple[str, ...] | None = None,
                   settings: dict[str, str] | None = None, **kwargs: object) -> WorkerProcess:
        """A worker of this namespace; `settings` are its own, on top of the cluster's."""
        name = name or f"{self.namespace}-{len(self.workers) + 1}"
        env = {"PYTHONPATH": str(ROOT), "TEST_WORKER_NAME": name, **self.env}
        env.update({f"BO_QUEUE_{k.upper()}": v
                    for k, v in {**self.settings, **(settings or {})}.items()})
        worker = WorkerProcess(
            self.redis_url, self.namespace, concurrency=concurrency, imports=imports,
            name=name, env=env, queues=queues or self.queues, **kwargs,  # type: ignore[arg-type]
        )
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def start_workers(self, *workers: dict[str, Any]) -> list[WorkerProcess]:
        """Add and start workers side by side (each takes a couple of seconds to start);
        each dict holds add_worker's keywords. Closes the cluster if one fails."""
        try:
            started = [self.add_worker(start=False, **w) for w in workers]
            for worker in started:
                worker.start(wait=0)
            for worker in started:  # workers that import Ax take a minute on a busy machine
                worker.wait_ready(timeout=120)
        except BaseException:
            self.close()
            raise
        return started

    def close(self) -> None:
        # side by side: each waits up to 5 s for what it runs (a task a test left blocked
        # is killed after that)
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda worker: worker.stop(timeout=5), self.workers))
        if self.bq is not None:
            self.bq.close()


def make_cluster(redis_url: str, workers: int, concurrency: int,
                 queues: tuple[str, ...] = ("default",),
                 imports: tuple[str, ...] = (HANDLERS,), **settings: str) -> Cluster:
    cluster = Cluster(redis_url, new_namespace(), settings, queues=queues)
    cluster.start_workers(*({"concurrency": concurrency, "imports": imports}
                            for _ in range(workers)))
    return cluster


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Cluster]:
    """Workers shared by the tests of one module: two of concurrency 2, unless the module's
    CLUSTER (make_cluster's keywords) says otherwise."""
    config: dict[str, Any] = {"workers": 2, "concurrency": 2,
                              **getattr(request.module, "CLUSTER", {})}
    c = make_cluster(redis_server.url, **config)
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
