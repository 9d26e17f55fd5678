"""Pull mode against a real Redis: agent threads claiming concurrently, a lease that runs
out, capabilities, cancellation, a pull task that depends on a task a real worker runs,
and the whole cycle over HTTP through a real `bo-queue api` process."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from bo_queue import BOQueue, NotHeldError, Priority, TaskCancelledError, TaskState
from bo_queue.agents import ClaimedTask
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster
from tests.integration.api_server import api_client


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    """One worker process: only the dependency test needs a worker at all."""
    c = make_cluster(redis_url, workers=1, concurrency=1)
    yield c
    c.close()


def new_type(bq: BOQueue, requires: tuple[str, ...] = (), **options: Any) -> str:
    name = f"pull.{uuid.uuid4().hex[:8]}"
    bq.agents.declare_type(name, requires=requires, **options)
    return name


def agent_facade(cluster: Cluster) -> BOQueue:
    """An agent's own facade: its own connections, as a separate process would have."""
    return BOQueue(redis_url=cluster.redis_url, namespace=cluster.namespace)


def test_four_agents_claim_500_tasks_each_exactly_once(cluster: Cluster) -> None:
    bq = cluster.producer()
    kind = new_type(bq)
    levels = list(Priority)
    handles = bq.submit_many(
        {"handler": kind, "payload": {"i": i}, "priority": levels[i % len(levels)]}
        for i in range(500)
    )
    expected = {h.id: i for i, h in enumerate(handles)}
    claims: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def agent(name: str) -> None:
        mine: list[str] = []
        claims[name] = mine
        with agent_facade(cluster) as own:
            try:
                while (task := own.agents.claim(name, [kind])) is not None:
                    mine.append(task.id)
                    own.agents.complete(task.id, name, {"agent": name, "i": task.payload["i"]})
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=agent, args=(f"agent-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    counts = Counter(task_id for mine in claims.values() for task_id in mine)
    assert set(counts) == set(expected) and set(counts.values()) == {1}
    assert all(len(mine) > 0 for mine in claims.values()), {k: len(v) for k, v in claims.items()}
    claimed_by = {task_id: name for name, mine in claims.items() for task_id in mine}
    for handle in handles:
        assert handle.get(timeout=5) == {"agent": claimed_by[handle.id],
                                         "i": expected[handle.id]}
    # The order claims happened in, from the RUNNING events their scripts wrote:
    # priority never goes up.
    running = [e.id for e in bq.monitor.events(count=100_000)
               if e.state == "RUNNING" and e.id in expected]
    assert len(running) == 500
    priorities = [levels[expected[task_id] % len(levels)] for task_id in running]
    assert priorities == sorted(priorities, reverse=True)
    assert {bq.info(h.id).state for h in handles[:20]} == {TaskState.SUCCEEDED}


def test_a_dead_agents_task_is_released_after_its_lease_and_done_by_another(
    cluster: Cluster,
) -> None:
    bq = cluster.producer()
    kind = new_type(bq, lease_s=2)
    handle = bq.submit(kind, {"job": 1})
    with agent_facade(cluster) as dead, agent_facade(cluster) as alive:
        taken = dead.agents.claim("doomed")  # ... and then it never heartbeats again
        assert taken is not None and taken.id == handle.id
        assert alive.agents.claim("survivor", [kind]) is None
        found: list[ClaimedTask] = []

        def claimed() -> bool:
            task = alive.agents.claim("survivor", [kind])
            if task is not None:
                found.append(task)
            return bool(found)

        wait_until(claimed, timeout=10, interval=0.1, what="the lease to run out")
        assert found[0].id == handle.id and found[0].attempt == 2
        with pytest.raises(NotHeldError):
            dead.agents.complete(handle.id, "doomed", {"by": "doomed"})
        alive.agents.complete(handle.id, "survivor", {"by": "survivor"})
    assert handle.get(timeout=5) == {"by": "survivor"}
    info = bq.info(handle.id)
    assert (info.state, info.worker, info.attempts, info.lost) == (
        TaskState.SUCCEEDED, "survivor", 2, 1)


def test_holders_capabilities_and_cancellation(cluster: Cluster) -> None:
    bq = cluster.producer()
    kind = new_type(bq, requires=("spectrometer",))
    bq.agents.register("lab-1", kind="lab", capabilities=["spectrometer"])
    bq.agents.register("intern", kind="human", capabilities=["pipette"])
    queued, held, other = (bq.submit(kind, {"n": n}) for n in range(3))
    assert bq.agents.claim("intern") is None  # lacks the capability: never gets one
    bq.cancel(queued.id)
    task = bq.agents.claim("lab-1")
    assert task is not None and task.id == held.id  # the cancelled one is skipped
    for call in (lambda: bq.agents.complete(held.id, "intern", 1),
                 lambda: bq.agents.fail(held.id, "intern", "not mine"),
                 lambda: bq.agents.release(held.id, "intern")):
        with pytest.raises(NotHeldError):
            call()
    assert bq.cancel(held.id) is TaskState.RUNNING
    assert bq.agents.heartbeat("lab-1").cancelled == [held.id]
    with pytest.raises(TaskCancelledError):
        bq.agents.complete(held.id, "lab-1", {"late": True})
    with pytest.raises(TaskCancelledError):
        held.get(timeout=5)
    with pytest.raises(TaskCancelledError):
        queued.get(timeout=5)
    assert bq.agents.claim("intern") is None
    task = bq.agents.claim("lab-1")
    assert task is not None and task.id == other.id
    listed = {a.id: a for a in bq.agents.agents()}
    assert listed["lab-1"].tasks == (other.id,) and listed["lab-1"].alive
    assert listed["intern"].kind == "human" and listed["intern"].tasks == ()
    bq.agents.complete(other.id, "lab-1", "done")
    assert other.get(timeout=5) == "done"


def test_a_pull_task_depending_on_a_worker_task_waits_for_it(
    cluster: Cluster, evidence: redis.Redis
) -> None:
    bq = cluster.producer()
    kind = new_type(bq)
    gate_key = f"evidence:gate:{uuid.uuid4().hex}"
    gate = bq.submit("t.gate", {"key": gate_key})
    pulled = bq.submit(kind, {"after": gate.id}, depends_on=[gate])
    wait_until(lambda: evidence.exists(gate_key + ":entered"), timeout=20, what="the gate")
    assert bq.agents.claim("a1", [kind]) is None
    assert pulled.state is TaskState.PENDING
    evidence.set(gate_key, 1)  # the worker's task succeeds; its settle releases ours
    found: list[ClaimedTask] = []

    def claimed() -> bool:
        task = bq.agents.claim("a1", [kind])
        if task is not None:
            found.append(task)
        return bool(found)

    wait_until(claimed, timeout=20, what="the dependent to be released")
    assert gate.get(timeout=5) == "opened" and found[0].id == pulled.id
    bq.agents.complete(pulled.id, "a1", {"ok": True})
    # and the other way round: a worker task that depends on a pulled one
    first = bq.submit(kind, {})
    after = bq.submit("t.echo", {"after": "pulled"}, depends_on=[first])
    task = bq.agents.claim("a1", [kind])
    assert task is not None and task.id == first.id
    bq.agents.complete(first.id, "a1", 1)
    assert after.get(timeout=20) == {"after": "pulled"}


def test_an_agent_cancels_a_task_and_its_dependents_are_settled(cluster: Cluster) -> None:
    bq = cluster.producer()
    kind = new_type(bq)
    first = bq.submit(kind, {})
    cancelled = bq.submit("t.echo", {"never": True}, depends_on=[first])
    runs = bq.submit("t.echo", {"ran": True}, depends_on=[first],
                     on_dependency_failure="run")
    agent = agent_facade(cluster)
    try:
        task = agent.agents.claim("a-cancel", [kind])
        assert task is not None and task.id == first.id
        with pytest.raises(NotHeldError):
            agent.agents.cancel(first.id, "someone-else")
        agent.agents.cancel(first.id, "a-cancel", reason="reagent ran out")
    finally:
        agent.close()
    with pytest.raises(TaskCancelledError, match="reagent ran out"):
        first.get(timeout=5)
    assert bq.info(first.id).error == "reagent ran out"
    with pytest.raises(TaskCancelledError, match=f"dependency {first.id} CANCELLED"):
        cancelled.get(timeout=5)
    assert runs.get(timeout=20) == {"ran": True}


@pytest.fixture(scope="module")
def http(redis_url: str, cluster: Cluster) -> Iterator[httpx.Client]:
    with api_client(redis_url, cluster.namespace, "agents", timeout=30) as session:
        yield session


def test_the_cycle_over_http(http: httpx.Client) -> None:
    kind = f"pull.http.{uuid.uuid4().hex[:8]}"
    declared = http.post("/agent-types", json={"name": kind, "requires": ["arm"],
                                               "lease_s": 600})
    assert declared.status_code == 201, declared.text
    assert declared.json()["requires"] == ["arm"]
    assert http.post("/agents", json={"id": "bot-1", "kind": "robot",
                                      "capabilities": ["arm"]}).status_code == 201
    assert http.post("/agents/bot-1/claim", json={"task_types": [kind]}).status_code == 204
    ids = [http.post("/tasks", json={"handler": kind, "payload": {"n": n},
                                     "priority": priority}).json()["id"]
           for n, priority in enumerate(("low", "high"))]
    claim = http.post("/agents/bot-1/claim", json={"task_types": [kind], "lease_s": 60})
    assert claim.status_code == 200, claim.text
    task = claim.json()
    assert (task["id"], task["payload"], task["priority"], task["attempt"]) == (
        ids[1], {"n": 1}, Priority.HIGH, 1)
    assert http.post("/agents/bot-1/heartbeat").json() == {"held": [ids[1]], "cancelled": []}
    wrong = http.post(f"/tasks/{ids[1]}/complete", json={"agent_id": "bot-2", "result": 1})
    assert wrong.status_code == 409 and wrong.json()["error"] == "NotHeldError", wrong.text
    done = http.post(f"/tasks/{ids[1]}/complete",
                     json={"agent_id": "bot-1", "result": {"yield": 0.82}})
    assert done.status_code == 200 and done.json()["state"] == "SUCCEEDED", done.text
    result = http.get(f"/tasks/{ids[1]}/result")
    assert result.status_code == 200 and result.json()["result"] == {"yield": 0.82}
    # the other one: claimed (no body: every type it may serve), released, failed
    again = http.post("/agents/bot-1/claim")
    assert again.status_code == 200 and again.json()["id"] == ids[0]
    released = http.post(f"/tasks/{ids[0]}/release", json={"agent_id": "bot-1"})
    assert released.json()["state"] == "QUEUED"
    assert http.post("/agents/bot-1/claim").json()["attempt"] == 2
    failed = http.post(f"/tasks/{ids[0]}/fail", json={
        "agent_id": "bot-1", "error": "the arm jammed", "error_type": "lab.ArmJammed"})
    assert failed.json()["state"] == "FAILED"
    outcome = http.get(f"/tasks/{ids[0]}/result")
    assert outcome.status_code == 409
    assert outcome.json()["detail"] == "lab.ArmJammed: the arm jammed"
    # an ended task can be deleted; one that has not ended cannot
    assert http.delete(f"/tasks/{ids[0]}").status_code == 204
    assert http.get(f"/tasks/{ids[0]}").status_code == 404
    assert http.delete(f"/tasks/{ids[0]}").status_code == 404
    third = http.post("/tasks", json={"handler": kind, "payload": {}}).json()["id"]
    refused_delete = http.delete(f"/tasks/{third}")
    assert refused_delete.status_code == 409, refused_delete.text
    assert http.post("/agents/bot-1/claim").json()["id"] == third
    given_up = http.post(f"/tasks/{third}/agent-cancel",
                         json={"agent_id": "bot-1", "reason": "no sample"})
    assert given_up.status_code == 200 and given_up.json()["state"] == "CANCELLED"
    gone = http.get(f"/tasks/{third}/result")
    assert gone.status_code == 410 and "no sample" in gone.json()["detail"]
    agents = {a["id"]: a for a in http.get("/agents").json()}
    assert agents["bot-1"]["kind"] == "robot" and agents["bot-1"]["alive"] is True
    no_cap = http.post("/agents", json={"id": "bot-2", "capabilities": []})
    assert no_cap.status_code == 201
    refused = http.post("/agents/bot-2/claim", json={"task_types": [kind]})
    assert refused.status_code == 409 and refused.json()["error"] == "AgentError"
    assert http.post("/agent-types", json={"name": "t.echo"}).status_code == 422
    assert http.delete("/agents/bot-2").json() == {"id": "bot-2", "given_back": []}
