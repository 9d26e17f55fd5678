"""Bad input and security: two namespaces on one Redis, each with its own worker.

Namespace B knows the ids of A's tasks and studies (as a leaked log line would tell it)
and tries everything the facade offers on them: B sees none of them, changes none of
them, and its worker runs none of A's tasks, while A's tasks run to their end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
import redis

from bo_queue import (
    BOQueue,
    DependencyError,
    Objective,
    Range,
    ResultTimeoutError,
    StudyNotFoundError,
    StudyStatus,
    TaskHandle,
    TaskState,
    TrialNotFoundError,
    UnknownTaskError,
)
from bo_queue.testing import wait_until
from tests.conftest import Cluster, new_namespace
from tests.reliability import report

SECTION = "Bad input and security"


@pytest.fixture(scope="module")
def pair(redis_url: str) -> Iterator[tuple[Cluster, Cluster]]:
    """Namespaces A and B, one worker each (started side by side)."""
    a, b = Cluster(redis_url, new_namespace()), Cluster(redis_url, new_namespace())
    try:
        workers = [a.add_worker(1, start=False), b.add_worker(1, start=False)]
        for worker in workers:
            worker.start(wait=0)
        for worker in workers:
            worker.wait_ready()
        yield a, b
    finally:
        with ThreadPoolExecutor() as pool:  # side by side: each waits for its worker
            list(pool.map(Cluster.close, (a, b)))


def _state(bq: BOQueue, task_id: str) -> TaskState:
    """The record's own state (info() may already go by a stored result)."""
    record = bq.records.get(task_id)
    assert record is not None
    return record.state


def test_b_cannot_see_or_touch_a_tasks(pair: tuple[Cluster, Cluster], evidence: redis.Redis,
                                       ) -> None:
    a, b = pair
    bqa, bqb = a.producer(), b.producer()
    a_host, b_host = a.workers[0].hostname, b.workers[0].hostname
    key, tag = f"evidence:ns:{uuid.uuid4().hex[:8]}", f"tag-{uuid.uuid4().hex[:8]}"

    # A: one FAILED task, one RUNNING (held by a gate), one QUEUED behind it (one process)
    failed = bqa.submit("t.fail_until_fixed", {"fixed": f"{key}:never"}, tags=[tag])
    wait_until(lambda: _state(bqa, failed.id) is TaskState.FAILED, 15, what="A's failed task")
    gate = bqa.submit("t.gate", {"key": f"{key}:gate"}, tags=[tag])
    wait_until(lambda: evidence.exists(f"{key}:gate:entered"), 15, what="A's gate to run")
    queued = bqa.submit("t.record_order", {"list": f"{key}:ran", "label": "a"}, tags=[tag])
    ids = {failed.id, gate.id, queued.id}
    assert _state(bqa, queued.id) is TaskState.QUEUED

    # B knows the ids and the tag; every call on them says "no such task"
    calls: list[Callable[[str], Any]] = [
        bqb.info, bqb.handle, bqb.cancel, partial(bqb.cancel, terminate=True), bqb.children,
        bqb.tree, bqb.retry,
    ]
    for task_id in ids:
        for call in calls:
            with pytest.raises(UnknownTaskError):
                call(task_id)
        assert bqb.results.fetch(task_id) is None
    assert bqa.results.fetch(failed.id) is not None  # A's stored failure, not B's to read
    assert bqb.cancel_tag(tag) == []
    assert bqb.tasks(tag=tag) == []
    seen = {t.id for t in bqb.tasks(limit=1000)} | {t.id for t in bqb.failed(limit=1000)}
    assert not seen & ids
    assert failed.id in {t.id for t in bqa.failed()}

    # nor does B's monitor show A's queue, worker, events or handlers
    assert all(q.length == 0 for q in bqb.monitor.queues())
    assert sum(q.length for q in bqa.monitor.queues()) == 1
    assert {w.hostname for w in bqb.monitor.workers()} == {b_host}
    assert not {e.id for e in bqb.monitor.events()} & ids
    metrics = bqb.monitor.metrics()
    assert metrics.running == 0 and "t.gate" not in metrics.handlers
    # Celery's own broadcasts stay in B too: a terminate for A's running task, then a
    # ping on the same channel that only B's worker answers (A's never hears B's)
    bqb.app.control.revoke(gate.id, terminate=True)
    # (asked until answered: a reply can miss a 1 s window on a busy machine; only B's
    # worker may ever answer)
    answers: list[set[str]] = []

    def answered() -> bool:
        answers.append(set(bqb.app.control.inspect(timeout=1).ping() or {}))
        return bool(answers[-1])

    wait_until(answered, 30, what="B's worker to answer a ping")
    assert all(a <= {b_host} for a in answers) and answers[-1] == {b_host}

    # B cannot make a task of its own wait on A's (nor learn A's state that way)
    with pytest.raises(DependencyError):
        bqb.submit("t.record_order", {"list": f"{key}:b", "label": "x"}, depends_on=[gate.id])

    # B's worker, idle and listening all along, never took A's queued task; B may even
    # reuse its id for a task of its own, which runs in B and leaves A's alone
    [mine] = bqb.submit_many([{"handler": "t.record_order", "id": queued.id,
                               "payload": {"list": f"{key}:b", "label": "b"}}])
    assert mine.get(timeout=15) == "b"
    assert bqb.info(mine.id).worker == b_host
    assert _state(bqa, queued.id) is TaskState.QUEUED
    assert sum(q.length for q in bqa.monitor.queues()) == 1

    # A's tasks, which B "cancelled" and "terminated", run to their end on A's worker
    evidence.set(f"{key}:gate", 1)
    assert gate.get(timeout=15) == "opened"
    assert queued.get(timeout=15) == "a"
    for task_id in (gate.id, queued.id):
        info = bqa.info(task_id)
        assert info.state is TaskState.SUCCEEDED and info.worker == a_host
    assert evidence.lrange(f"{key}:ran", 0, -1) == ["a"]
    assert _state(bqa, failed.id) is TaskState.FAILED
    # and B still cannot read A's results now that they exist: B's view of the ids is its
    # own (the REVOKED its raw revoke stored for the gate's id, its own task's "b")
    assert bqb.results.fetch(failed.id) is None
    with pytest.raises(ResultTimeoutError):
        TaskHandle(bqb, failed.id).get(timeout=0.2)
    assert (bqb.results.fetch(queued.id) or {}).get("result") == "b"
    assert (bqa.results.fetch(queued.id) or {}).get("result") == "a"
    assert (bqa.results.fetch(gate.id) or {}).get("status") == "SUCCESS"
    report.record(
        SECTION, "Namespace isolation: tasks (B holds A's ids and tag)",
        "B cannot info, get, cancel, cancel by tag, retry, depend on, list or monitor A's "
        "tasks, even reusing an id; A's run to SUCCEEDED on A's worker only",
        tasks=len(ids) + 1, calls=len(ids) * len(calls) + 6,
    )


def test_b_cannot_see_or_touch_a_studies(pair: tuple[Cluster, Cluster]) -> None:
    a, b = pair
    bqa, bqb = a.producer(), b.producer()
    study = bqa.studies.create("private", parameters=[Range("x", 0.0, 1.0)],
                               objectives=[Objective("loss")])
    sid = study.id
    studies = bqb.studies
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: studies.get(sid),
        "trials": lambda: studies.trials(sid),
        "export": lambda: studies.export(sid),
        "report": lambda: studies.report(sid, 0, {"loss": 1.0}),
        "report_failure": lambda: studies.report_failure(sid, 0, "forged"),
        "pause": lambda: studies.pause(sid),
        "resume": lambda: studies.resume(sid),
        "complete": lambda: studies.complete(sid),
        "fail": lambda: studies.fail(sid, "forged"),
    }
    for name, call in calls.items():
        with pytest.raises(StudyNotFoundError):
            call()
        assert bqa.studies.get(sid).status is StudyStatus.CREATED, name
    with pytest.raises(TrialNotFoundError):  # says "no trial 0", whether or not the study is
        studies.trial(sid, 0)
    assert studies.delete(sid) is False
    assert sid not in {s.id for s in studies.list()}

    after = bqa.studies.get(sid)
    assert after.status is StudyStatus.CREATED and after.name == "private"
    assert bqa.studies.trials(sid) == []
    assert sid in {s.id for s in bqa.studies.list()}
    report.record(
        SECTION, "Namespace isolation: studies (B holds A's study id)",
        "B cannot get, report to, pause, complete, fail or delete A's study; it is unchanged",
        calls=len(calls) + 3,
    )
