"""bq.delete on fakeredis: every key of an ended task goes in one script; a task that has
not ended is refused, an unknown id is UnknownTaskError. Also bq.agents.cancel."""

from __future__ import annotations

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
    bq.cancel(task)
    bq.delete(task)
    assert not bq.redis.exists(bq.keys.cancelled(task))
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
