"""bq.delete on fakeredis: every key of an ended task goes in one script; a task that has
not ended is refused, an unknown id is UnknownTaskError. Also bq.agents.cancel."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import fakeredis
import pytest

from bo_queue import (
    BOQueue,
    NotHeldError,
    TaskCancelledError,
    TaskState,
    UnknownTaskError,
    ValidationError,
)
from bo_queue.agents import AgentManager
from bo_queue.aio import AsyncBOQueue
from bo_queue.api.app import create_app
from bo_queue.api.routing import async_caller, caller
from bo_queue.config import Settings

from .fakes import UNREACHABLE_URL, fake_aq

with warnings.catch_warnings():  # Starlette >= 1.x asks for httpx2 over httpx; either works
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from fastapi.testclient import TestClient

TYPE = "lab.measure"


@pytest.fixture
def agents(bq: BOQueue) -> AgentManager:
    bq.agents.declare_type(TYPE)
    return bq.agents


def run(agents: AgentManager, task_id: str, agent: str = "robot-1") -> None:
    claimed = agents.claim(agent)
    assert claimed is not None and claimed.id == task_id


def test_delete_removes_every_key_of_an_ended_task(bq: BOQueue, agents: AgentManager) -> None:
    parent = bq.submit(TYPE, {"p": 1}).id
    run(agents, parent)
    agents.complete(parent, "robot-1", {"ok": True})
    task = bq.submit(TYPE, {"x": 1}, tags=["nightly"], parent_id=parent,
                     depends_on=[parent]).id
    run(agents, task)
    bq.redis.set(bq.keys.checkpoint(task), "{}")
    agents.fail(task, "robot-1", "jammed")
    assert bq.info(task).state is TaskState.FAILED
    result_key = bq.results.key(task)
    assert bq.results.redis.exists(result_key)
    assert bq.redis.zscore(bq.keys.failed, task) is not None

    bq.delete(task)

    with pytest.raises(UnknownTaskError):
        bq.info(task)
    assert not bq.results.redis.exists(result_key)
    for key in (bq.keys.task(task), bq.keys.checkpoint(task), bq.keys.cancelled(task),
                bq.keys.children(task), bq.keys.dependents(task), bq.keys.waiting(task)):
        assert not bq.redis.exists(key), key
    for state in TaskState:
        assert bq.redis.zscore(bq.keys.state_index(state), task) is None
    assert bq.redis.zscore(bq.keys.failed, task) is None
    assert task not in bq.redis.smembers(bq.keys.tag("nightly"))
    assert task not in bq.redis.smembers(bq.keys.children(parent))
    assert task not in bq.redis.smembers(bq.keys.dependents(parent))
    assert [t.id for t in bq.tasks()] == [parent]
    assert bq.info(parent).children == ()
    with pytest.raises(UnknownTaskError):
        bq.delete(task)  # gone: a second delete is an unknown id


def test_a_task_that_has_not_ended_is_not_deleted(bq: BOQueue, agents: AgentManager) -> None:
    task = bq.submit(TYPE, {}, tags=["t"]).id
    with pytest.raises(ValidationError, match="has not ended"):
        bq.delete(task)
    run(agents, task)
    with pytest.raises(ValidationError, match="RUNNING"):
        bq.delete(task)
    assert bq.info(task).state is TaskState.RUNNING
    assert task in bq.redis.smembers(bq.keys.tag("t"))


def test_an_unknown_or_malformed_id(bq: BOQueue) -> None:
    with pytest.raises(UnknownTaskError):
        bq.delete("nope")
    with pytest.raises(UnknownTaskError):  # an id no record can have, as for info()
        bq.delete("not a/valid id")


def test_a_cancelled_task_can_be_deleted(bq: BOQueue, agents: AgentManager) -> None:
    task = bq.submit(TYPE, {}).id
    bq.cancel(task)  # while it waits for an agent: still in its type's queue
    assert bq.redis.zscore(bq.keys.pull_ready(TYPE), task) is not None
    bq.delete(task)
    assert not bq.redis.exists(bq.keys.cancelled(task))
    assert bq.redis.zscore(bq.keys.pull_ready(TYPE), task) is None
    assert bq.redis.hget(bq.keys.pull_tasks, task) is None
    assert bq.redis.hget(bq.keys.pull_messages, task) is None
    assert agents.claim("robot-1") is None
    assert not bq.results.redis.exists(bq.results.key(task))
    with pytest.raises(UnknownTaskError):
        bq.info(task)


# -- bq.agents.cancel -----------------------------------------------------------------


def test_an_agent_cancels_the_task_it_holds(bq: BOQueue, agents: AgentManager) -> None:
    task = bq.submit(TYPE, {}).id
    cancelled_dep = bq.submit(TYPE, {}, depends_on=[task]).id
    runs_anyway = bq.submit(TYPE, {}, depends_on=[task], on_dependency_failure="run").id
    run(agents, task)
    agents.cancel(task, "robot-1", reason="sample contaminated")
    info = bq.info(task)
    assert info.state is TaskState.CANCELLED and info.error == "sample contaminated"
    with pytest.raises(TaskCancelledError, match="sample contaminated"):
        bq.handle(task).get(timeout=0)
    assert bq.info(cancelled_dep).state is TaskState.CANCELLED
    with pytest.raises(TaskCancelledError, match=f"dependency {task} CANCELLED"):
        bq.handle(cancelled_dep).get(timeout=0)
    assert bq.info(runs_anyway).state is TaskState.QUEUED
    claimed = agents.claim("robot-1")
    assert claimed is not None and claimed.id == runs_anyway
    assert bq.agents.agent("robot-1").tasks == (runs_anyway,)


def test_only_the_holder_may_cancel(bq: BOQueue, agents: AgentManager) -> None:
    task = bq.submit(TYPE, {}).id
    with pytest.raises(NotHeldError, match="waiting for an agent"):
        agents.cancel(task, "robot-1")
    run(agents, task)
    with pytest.raises(NotHeldError, match="'robot-1' holds it"):
        agents.cancel(task, "robot-2")
    with pytest.raises(ValidationError):
        agents.cancel(task, "robot-1", reason="")
    with pytest.raises(UnknownTaskError):
        agents.cancel("nope", "robot-1")
    agents.complete(task, "robot-1", 1)
    with pytest.raises(NotHeldError, match="ended"):
        agents.cancel(task, "robot-1")
    assert bq.info(task).state is TaskState.SUCCEEDED


# -- over HTTP (the app's error handlers, in process) --------------------------------


@pytest.fixture
def http(bq: BOQueue, server: fakeredis.FakeServer,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # Celery keeps one result backend per thread; the sync routes run in a thread pool,
    # where a new one would connect to the URL. They get this thread's (on fakeredis).
    backend = bq.app.backend
    monkeypatch.setattr(type(bq.app), "backend", property(lambda _app: backend))
    app = create_app(Settings.load(redis_url=UNREACHABLE_URL, namespace="unit"))
    aq = fake_aq(bq, server)  # for the async routes (a record, a result): the same server

    async def async_bq() -> AsyncBOQueue:
        return aq

    app.dependency_overrides[caller] = lambda: bq
    app.dependency_overrides[async_caller] = async_bq
    with TestClient(app) as client:
        yield client
        client.portal.call(aq.close)


def test_delete_over_http(bq: BOQueue, agents: AgentManager, http: TestClient) -> None:
    task = bq.submit(TYPE, {}).id
    refused = http.delete(f"/tasks/{task}")
    assert refused.status_code == 409
    assert refused.json()["error"] == "ValidationError"
    assert "has not ended" in refused.json()["detail"]
    run(agents, task)
    agents.complete(task, "robot-1", {"ok": 1})
    done = http.delete(f"/tasks/{task}")
    assert done.status_code == 204 and done.content == b""
    assert http.get(f"/tasks/{task}").status_code == 404
    gone = http.delete(f"/tasks/{task}")
    assert gone.status_code == 404 and gone.json()["error"] == "UnknownTaskError"


def test_agent_cancel_over_http(bq: BOQueue, agents: AgentManager, http: TestClient) -> None:
    task = bq.submit(TYPE, {}).id
    dependent = bq.submit(TYPE, {}, depends_on=[task]).id
    run(agents, task)
    wrong = http.post(f"/tasks/{task}/agent-cancel", json={"agent_id": "robot-2"})
    assert wrong.status_code == 409 and wrong.json()["error"] == "NotHeldError"
    body = {"agent_id": "robot-1", "reason": "sample contaminated"}
    done = http.post(f"/tasks/{task}/agent-cancel", json=body)
    assert done.status_code == 200
    assert done.json()["state"] == "CANCELLED" and done.json()["error"] == "sample contaminated"
    result = http.get(f"/tasks/{task}/result")
    assert result.status_code == 410 and "sample contaminated" in result.json()["detail"]
    assert http.get(f"/tasks/{dependent}").json()["state"] == "CANCELLED"
    again = http.post(f"/tasks/{task}/agent-cancel", json=body)
    assert again.status_code == 410  # TaskCancelledError: it has ended CANCELLED
    assert http.post("/tasks/nope/agent-cancel", json=body).status_code == 404
    assert http.post(f"/tasks/{task}/agent-cancel",
                     json={"agent_id": "robot-1", "reason": ""}).status_code == 422
