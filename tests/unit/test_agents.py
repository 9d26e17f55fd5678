"""Pull mode on fakeredis: the claim, heartbeat, finish and release scripts (ordering,
leases that run out, holder checks, cancelled and expired tasks skipped), and what
BOQueue routes to the agents. Time is the manager's clock, moved by the tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bo_queue import (
    AgentError,
    BOQueue,
    NotHeldError,
    Objective,
    Priority,
    Range,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskState,
    UnknownHandlerError,
    UnknownTaskError,
    ValidationError,
)
from bo_queue.agents import DEFAULT_LEASE_S, PULL_QUEUE, AgentManager

TYPE = "lab.measure"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(bq: BOQueue) -> Clock:
    clock = Clock()
    bq.agents.clock = clock
    return clock


@pytest.fixture
def agents(bq: BOQueue, clock: Clock) -> AgentManager:
    bq.agents.declare_type(TYPE)
    return bq.agents


def submit(bq: BOQueue, n: int = 1, handler: str = TYPE, **options: Any) -> list[str]:
    handles = bq.submit_many(
        [{"handler": handler, "payload": {"i": i}, **options} for i in range(n)]
    )
    return [h.id for h in handles]


# -- declaring and routing ----------------------------------------------------------


def test_a_pull_type_is_in_the_handler_directory_and_routes_to_the_agents(
    bq: BOQueue, agents: AgentManager
) -> None:
    entry = json.loads(str(bq.redis.hget(bq.keys.handlers, TYPE)))
    assert entry["pull"] is True and entry["queue"] == PULL_QUEUE
    [task_id] = submit(bq)
    info = bq.info(task_id)
    assert info.queue == PULL_QUEUE and info.state is TaskState.QUEUED
    assert bq.redis.zrange(bq.keys.pull_ready(TYPE), 0, -1) == [task_id]
    assert bq.redis.ttl(bq.keys.task(task_id)) == -1  # waits for an agent as long as it takes
    assert [t.waiting for t in agents.types()] == [1]
    assert agents.default_lease_s == DEFAULT_LEASE_S


def test_a_pull_type_cannot_be_a_closed_loop_evaluator(bq: BOQueue, agents: AgentManager) -> None:
    # its results come from agents, which no study hears: ask/tell is the way
    with pytest.raises(ValidationError, match=r"pull task type.*ask/tell"):
        bq.studies.create(name="s", parameters=[Range("x", 0.0, 1.0)],
                          objectives=[Objective("loss")], evaluator=TYPE)
    assert bq.studies.list() == []  # nothing written


def test_a_name_workers_serve_cannot_be_a_pull_type(bq: BOQueue, agents: AgentManager) -> None:
    bq.redis.hset(bq.keys.handlers, "served", json.dumps({"queue": "default"}))
    with pytest.raises(ValidationError, match="workers serve"):
        agents.declare_type("served")
    with pytest.raises(ValidationError, match="pull task type"):
        bq.submit(TYPE, {}, queue="default")
    with pytest.raises(UnknownHandlerError):
        agents.claim("a1", task_types=["nobody.declared"])
    with pytest.raises(ValidationError, match="not a pull task type"):
        agents.claim("a1", task_types=["served"])
    for bad in ({"lease_s": 0}, {"lease_s": float("inf")}, {"requires": [""]},
                {"requires": 5}):
        with pytest.raises(ValidationError):
            agents.declare_type("x.y", **bad)


def test_a_second_declaration_changes_requirements_and_lease(agents: AgentManager) -> None:
    agents.declare_type(TYPE, requires=["b", "a", "a"], lease_s=60)
    [declared] = agents.types()
    assert declared.requires == ("a", "b") and declared.lease_s == 60


# -- claiming -------------------------------------------------------------------------


def test_claims_take_the_highest_priority_first_then_the_oldest(
    bq: BOQueue, agents: AgentManager
) -> None:
    agents.declare_type("lab.other")
    order = []
    for priority in ("low", "high", "normal", "critical", "high", "low"):
        order.append(bq.submit(TYPE, {"p": priority}, priority=priority).id)
    late_urgent = bq.submit("lab.other", {}, priority="urgent").id
    claimed = []
    while (task := agents.claim("a1")) is not None:
        claimed.append(task.id)
    by_rank = sorted(order, key=lambda i: -bq.info(i).priority)  # stable: oldest first
    by_rank.insert(1, late_urgent)  # across types: after critical, before high
    assert claimed == by_rank


def test_a_claim_makes_the_task_running_under_a_lease(
    bq: BOQueue, agents: AgentManager, clock: Clock
) -> None:
    [task_id] = submit(bq, tags=("nightly",), priority=Priority.HIGH)
    task = agents.claim("a1", lease_s=30)
    assert task is not None
    assert (task.id, task.type, task.payload, task.priority, task.attempt, task.tags) == (
        task_id, TYPE, {"i": 0}, Priority.HIGH, 1, ("nightly",))
    assert task.lease_expires_at.timestamp() == pytest.approx(clock.now + 30)
    info = bq.info(task_id)
    assert info.state is TaskState.RUNNING and info.worker == "a1" and info.attempts == 1
    assert agents.claim("a2") is None  # nobody else gets it
    assert 0 < bq.redis.ttl(bq.keys.task(task_id)) <= bq.settings.result_expires_s + 30
    agent = agents.agent("a1")  # claiming is enough to be listed
    assert (agent.id, agent.kind, agent.tasks, agent.alive) == ("a1", None, (task_id,), True)
    assert [a.id for a in agents.agents()] == ["a1", "a2"]


def test_a_lease_that_runs_out_releases_the_task_to_another_agent(
    bq: BOQueue, agents: AgentManager, clock: Clock
) -> None:
    [task_id] = submit(bq)
    assert agents.claim("a1", lease_s=2) is not None
    clock.advance(1.9)
    assert agents.claim("a2") is None
    clock.advance(0.2)
    again = agents.claim("a2")
    assert again is not None and again.id == task_id and again.attempt == 2
    info = bq.info(task_id)
    assert (info.worker, info.lost, info.attempts) == ("a2", 1, 2)
    assert "lease of agent a1 ran out" in str(info.error)
    with pytest.raises(NotHeldError, match="'a2' holds it"):
        agents.complete(task_id, "a1", {"late": True})
    assert agents.heartbeat("a1").held == []
    agents.complete(task_id, "a2", {"by": "a2"})
    assert bq.handle(task_id).get(timeout=1) == {"by": "a2"}


def test_heartbeats_extend_leases(bq: BOQueue, agents: AgentManager, clock: Clock) -> None:
    [task_id] = submit(bq)
    agents.declare_type(TYPE, lease_s=10)
    assert agents.claim("a1") is not None
    for _ in range(5):
        clock.advance(8)
        assert agents.heartbeat("a1").held == [task_id]
    assert agents.claim("a2") is None
    clock.advance(10.5)  # silent for longer than the lease
    assert agents.heartbeat("a1").held == []  # too late: it went back
    assert bq.info(task_id).state is TaskState.QUEUED


def test_sweep_releases_expired_leases_without_a_claim(
    bq: BOQueue, agents: AgentManager, clock: Clock
) -> None:
    ids = submit(bq, 3)
    for _ in ids:
        agents.claim("a1", lease_s=1)
    clock.advance(2)
    assert agents.sweep() == 3
    assert {bq.info(i).state for i in ids} == {TaskState.QUEUED}
    assert agents.agents()[0].tasks == ()


def test_release_puts_the_task_back_in_its_old_place(
    bq: BOQueue, agents: AgentManager
) -> None:
    first, _ = submit(bq, 2)
    task = agents.claim("a1")
    assert task is not None and task.id == first
    assert agents.release(first, "a1") is TaskState.QUEUED
    again = agents.claim("a2")
    assert again is not None and again.id == first and again.attempt == 2
    assert bq.info(first).lost == 0  # given back, not lost


# -- who may finish -----------------------------------------------------------------


def test_only_the_holder_may_complete_fail_or_release(
    bq: BOQueue, agents: AgentManager
) -> None:
    [task_id] = submit(bq)
    agents.claim("a1")
    for call in (lambda: agents.complete(task_id, "a2", 1),
                 lambda: agents.fail(task_id, "a2", "no"),
                 lambda: agents.release(task_id, "a2")):
        with pytest.raises(NotHeldError, match="agent 'a1' holds it") as caught:
            call()
        assert caught.value.task_id == task_id and caught.value.agent_id == "a2"
    assert bq.info(task_id).state is TaskState.RUNNING
    agents.complete(task_id, "a1", [1, 2])
    with pytest.raises(NotHeldError, match="ended"):
        agents.complete(task_id, "a1", [1, 2])
    with pytest.raises(UnknownTaskError):
        agents.complete("no-such-task", "a1")
    with pytest.raises(ValidationError):
        agents.complete(task_id, "bad:agent")


def test_a_task_workers_run_is_not_held_by_an_agent(bq: BOQueue, agents: AgentManager) -> None:
    task_id = "worker-task"
    with bq.redis.pipeline() as pipe:  # what submit writes (its send would need Celery)
        bq.records.create(pipe, {"id": task_id, "handler": "w.job", "queue": "default",
                                 "priority": Priority.NORMAL, "state": TaskState.QUEUED,
                                 "created_at": time.time()})
        pipe.execute()
    bq.records.start(task_id, "worker@h", "w.job", "default", Priority.NORMAL)
    with pytest.raises(NotHeldError, match="not a pull task"):
        agents.complete(task_id, "a1", 1)


def test_a_result_that_is_not_json_is_refused_and_the_task_stays_held(
    bq: BOQueue, agents: AgentManager
) -> None:
    [task_id] = submit(bq)
    agents.claim("a1")
    with pytest.raises(ValidationError, match="not JSON"):
        agents.complete(task_id, "a1", {"x": {1, 2}})
    assert agents.heartbeat("a1").held == [task_id]


def test_two_finishes_of_one_task_cannot_overlap(bq: BOQueue, agents: AgentManager) -> None:
    [task_id] = submit(bq)
    agents.claim("a1")
    agents._start_finishing(task_id, "a1")  # a complete() whose result is being stored
    with pytest.raises(NotHeldError, match="being completed"):
        agents.fail(task_id, "a1", "changed my mind")
    with pytest.raises(NotHeldError, match="being completed"):
        agents.release(task_id, "a1")


def test_fail_stores_the_remote_type_message_and_traceback(
    bq: BOQueue, agents: AgentManager
) -> None:
    [task_id] = submit(bq)
    agents.claim("a1")
    agents.fail(task_id, "a1", "the rig jammed", error_type="lab.RigJammed",
                traceback="Traceback: rig.py line 3")
    with pytest.raises(TaskFailedError) as caught:
        bq.handle(task_id).get(timeout=1)
    assert (caught.value.remote_type, caught.value.remote_message,
            caught.value.remote_traceback) == (
        "lab.RigJammed", "the rig jammed", "Traceback: rig.py line 3")
    info = bq.info(task_id)
    assert info.state is TaskState.FAILED and info.error == "lab.RigJammed: the rig jammed"
    assert [f.id for f in bq.failed()] == [task_id]
    retried = bq.retry(task_id)  # the payload is in the stored result, as a worker's
    task = agents.claim("a1")
    assert task is not None and task.id == retried.id and task.payload == {"i": 0}
    with pytest.raises(ValidationError):
        agents.fail(task.id, "a1", "x", error_type="not a type")


# -- cancelled, expired, due later ------------------------------------------------------


def test_tasks_cancelled_while_queued_are_skipped(bq: BOQueue, agents: AgentManager) -> None:
    ids = submit(bq, 3)
    bq.cancel(ids[0])
    bq.cancel(ids[1])
    task = agents.claim("a1")
    assert task is not None and task.id == ids[2]
    assert bq.redis.ttl(bq.keys.task(ids[0])) > 0  # its retention counts again
    assert not bq.redis.hexists(bq.keys.pull_messages, ids[0])


def test_sweep_tidies_cancelled_tasks_from_the_queues(
    bq: BOQueue, agents: AgentManager
) -> None:
    ids = submit(bq, 3)
    bq.cancel(ids[1])
    assert agents.sweep() == 1
    assert bq.redis.zrange(bq.keys.pull_ready(TYPE), 0, -1) == [ids[0], ids[2]]


def test_a_task_cancelled_while_held_ends_when_its_agent_hears(
    bq: BOQueue, agents: AgentManager
) -> None:
    first, second = submit(bq, 2)
    agents.claim("a1")
    agents.claim("a1")
    assert bq.cancel(first) is TaskState.RUNNING  # the agent has not heard yet
    beat = agents.heartbeat("a1")
    assert (beat.held, beat.cancelled) == ([second], [first])
    assert bq.info(first).state is TaskState.CANCELLED
    with pytest.raises(TaskCancelledError):
        bq.handle(first).get(timeout=1)
    with pytest.raises(TaskCancelledError):
        agents.complete(first, "a1", 1)
    assert bq.info(first).state is TaskState.CANCELLED
    bq.cancel(second, reason="not needed")  # complete() is how this agent hears
    with pytest.raises(TaskCancelledError, match="not needed"):
        agents.complete(second, "a1", 1)
    assert bq.info(second).state is TaskState.CANCELLED


def test_a_cancelled_task_whose_lease_runs_out_is_cancelled_not_requeued(
    bq: BOQueue, agents: AgentManager, clock: Clock
) -> None:
    [task_id] = submit(bq)
    agents.claim("a1", lease_s=1)
    bq.cancel(task_id)
    clock.advance(2)
    assert agents.claim("a2") is None
    assert bq.info(task_id).state is TaskState.CANCELLED


def test_expired_tasks_are_skipped_and_end_expired(
    bq: BOQueue, agents: AgentManager, clock: Clock
) -> None:
    [stale] = submit(bq, expires=5)
    [fresh] = submit(bq, expires=100)
    clock.advance(10)
    task = agents.claim("a1")
    assert task is not None and task.id == fresh
    assert bq.records.get_fields(stale, "state") == ["EXPIRED"]
    with pytest.raises(TaskExpiredError):
        bq.handle(stale).get(timeout=1)


def test_a_countdown_keeps_a_task_from_agents_until_it_is_due(
    bq: BOQueue, agents: AgentManager, clock: Clock
) -> None:
    [task_id] = submit(bq, countdown=30)
    assert agents.claim("a1") is None
    clock.advance(31)
    task = agents.claim("a1")
    assert task is not None and task.id == task_id


# -- capabilities and agents --------------------------------------------------------


def test_tasks_go_only_to_agents_with_the_required_capabilities(
    bq: BOQueue, agents: AgentManager
) -> None:
    agents.declare_type("lab.pipette", requires=["pipette", "arm"])
    [plain] = submit(bq)
    [special] = submit(bq, handler="lab.pipette", priority="critical")
    agents.register("weak", kind="robot", capabilities=["arm"])
    agents.register("strong", kind="robot", capabilities=["arm", "pipette", "camera"])
    task = agents.claim("weak")
    assert task is not None and task.id == plain  # the critical one is not for it
    with pytest.raises(AgentError, match="pipette"):
        agents.claim("weak", task_types=["lab.pipette"])
    assert agents.claim("unregistered") is None
    task = agents.claim("strong")
    assert task is not None and task.id == special


def test_register_list_and_unregister_agents(
    bq: BOQueue, agents: AgentManager, clock: Clock
) -> None:
    agents.register("r1", kind="robot", capabilities=["arm"])
    agents.register("h1", kind="human")
    [task_id] = submit(bq)
    agents.claim("r1")
    clock.advance(bq.settings.heartbeat_timeout_s + 1)
    agents.heartbeat("h1")
    listed = {a.id: a for a in agents.agents()}
    assert listed["r1"].kind == "robot" and listed["r1"].capabilities == ("arm",)
    assert listed["r1"].tasks == (task_id,) and not listed["r1"].alive
    assert listed["h1"].alive and listed["h1"].tasks == ()
    assert agents.unregister("r1") == [task_id]
    assert [a.id for a in agents.agents()] == ["h1"]
    assert bq.info(task_id).state is TaskState.QUEUED
    with pytest.raises(AgentError):
        agents.agent("r1")
    with pytest.raises(ValidationError):
        agents.register("x", capabilities=["ok", 3])  # type: ignore[list-item]


# -- dependencies -------------------------------------------------------------------


def test_a_pull_task_waits_for_its_dependencies(bq: BOQueue, agents: AgentManager) -> None:
    first = bq.submit(TYPE, {"step": 1})
    second = bq.submit(TYPE, {"step": 2}, depends_on=[first])
    third = bq.submit(TYPE, {"step": 3}, depends_on=[second])
    task = agents.claim("a1")
    assert task is not None and task.id == first.id
    assert agents.claim("a1") is None  # the others wait on it
    agents.complete(first.id, "a1", "one")
    task = agents.claim("a1")
    assert task is not None and task.id == second.id
    agents.fail(second.id, "a1", "broken")
    assert bq.info(third.id).state is TaskState.CANCELLED
    assert "dependency" in str(bq.info(third.id).error)
    with pytest.raises(TaskCancelledError):
        third.get(timeout=1)


# -- the manual's page (docs/agents.md) ---------------------------------------------


def test_the_docs_snippet_runs(bq: BOQueue) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "agents.md").read_text()
    section = page.split("# External agents (pull mode)", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/agents.md", "exec"), {"bq": bq})  # the block as written
    [agent] = bq.agents.agents()
    assert agent.id == "robot-1" and agent.tasks == ()
