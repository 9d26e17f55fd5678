"""depends_on, plans, graphs and parent/child trees, on real workers."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest
import redis

from bo_queue import BOQueue, DependencyError, TaskCancelledError, TaskState
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster


@pytest.fixture(scope="module")
def four(redis_url: str) -> Iterator[Cluster]:
    """Two workers of concurrency 2: four worker processes."""
    c = make_cluster(redis_url, workers=2, concurrency=2)
    yield c
    c.close()


@pytest.fixture
def bq(four: Cluster) -> BOQueue:
    return four.producer()


def new_log() -> str:
    return f"evidence:dag:{uuid.uuid4().hex}"


def positions(evidence: redis.Redis, log: str) -> dict[str, int]:
    return {entry: i for i, entry in enumerate(evidence.lrange(log, 0, -1))}


def test_diamond_runs_in_order_and_d_sees_b_and_c(bq: BOQueue, evidence: redis.Redis) -> None:
    log = new_log()
    a = bq.submit("t.node", {"log": log, "value": 1})
    b = bq.submit("t.node", {"log": log, "value": 10}, depends_on=[a])
    c = bq.submit("t.node", {"log": log, "value": 100}, depends_on=[a.id])
    d = bq.submit("t.node", {"log": log, "value": 1000}, depends_on=[b, c])
    assert d.get(timeout=30) == 1000 + (10 + 1) + (100 + 1)
    at = positions(evidence, log)
    for first, then in ((a, b), (a, c), (b, d), (c, d)):
        assert at[f"end:{first.id}"] < at[f"start:{then.id}"]
    assert bq.info(d.id).depends_on == (b.id, c.id)
    assert bq.plan([a.id, b.id, c.id, d.id]) == [[a.id], [b.id, c.id], [d.id]]


def test_failing_dependency_cancels_dependents_transitively(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    log = new_log()
    a = bq.submit("t.node", {"log": log})
    b = bq.submit("t.node", {"log": log, "fail": True}, depends_on=[a])
    c = bq.submit("t.node", {"log": log}, depends_on=[a])
    d = bq.submit("t.node", {"log": log}, depends_on=[b, c])
    e = bq.submit("t.node", {"log": log}, depends_on=[d])
    anyway = bq.submit("t.node", {"log": log, "value": 7}, depends_on=[b],
                       on_dependency_failure="run")
    with pytest.raises(TaskCancelledError, match=f"dependency {b.id} FAILED"):
        d.get(timeout=30)
    with pytest.raises(TaskCancelledError, match=f"dependency {d.id} CANCELLED"):
        e.get(timeout=10)
    assert anyway.get(timeout=30) == 7  # b failed: no result of it to add
    assert c.get(timeout=30) == 0
    assert bq.info(d.id).state is TaskState.CANCELLED
    assert bq.info(d.id).error == f"dependency {b.id} FAILED"
    started = evidence.lrange(log, 0, -1)
    assert f"start:{d.id}" not in started and f"start:{e.id}" not in started
    assert bq.plan([a.id, b.id, c.id, d.id]) == [[a.id], [b.id, c.id], [d.id]]


def test_dependency_that_already_ended(bq: BOQueue) -> None:
    log = new_log()
    done = bq.submit("t.node", {"log": log, "value": 5})
    done.get(timeout=30)
    after = bq.submit("t.node", {"log": log}, depends_on=[done])
    assert after.get(timeout=30) == 5
    failed = bq.submit("t.node", {"log": log, "fail": True})
    with pytest.raises(Exception, match="fails as asked"):
        failed.get(timeout=30)
    doomed = bq.submit("t.node", {"log": log}, depends_on=[failed])
    # get() returns once the failure is stored; the record says FAILED a moment later,
    # and ending it cancels what waits on it (doomed, if it got in first: PENDING till then)
    wait_until(lambda: doomed.state is TaskState.CANCELLED, 10, what="doomed cancelled")
    with pytest.raises(TaskCancelledError):
        doomed.get(timeout=5)


def test_unknown_dependency_and_cycles_are_rejected(bq: BOQueue) -> None:
    with pytest.raises(DependencyError, match="no-such-task"):
        bq.submit("t.node", {"log": "x"}, depends_on=["no-such-task"])
    with pytest.raises(DependencyError, match="cycle: x -> z -> y -> x"):
        bq.submit_many([
            {"id": "x", "handler": "t.node", "payload": {"log": "x"}, "depends_on": ["z"]},
            {"id": "y", "handler": "t.node", "payload": {"log": "x"}, "depends_on": ["x"]},
            {"id": "z", "handler": "t.node", "payload": {"log": "x"}, "depends_on": ["y"]},
        ])
    assert not bq.records.exists("x")  # nothing of a rejected batch was written


def test_cancelling_a_waiting_task_cancels_its_dependents(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    key = f"evidence:gate:{uuid.uuid4().hex}"
    log = new_log()
    gate = bq.submit("t.gate", {"key": key})
    middle = bq.submit("t.node", {"log": log}, depends_on=[gate])
    last = bq.submit("t.node", {"log": log}, depends_on=[middle])
    assert middle.state is TaskState.PENDING
    assert bq.cancel(middle.id) is TaskState.CANCELLED
    assert last.state is TaskState.CANCELLED
    evidence.set(key, 1)
    assert gate.get(timeout=30) == "opened"
    assert evidence.llen(log) == 0


def test_random_dag_of_200_runs_each_task_once_in_topological_order(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    rng = random.Random(5)
    log = new_log()
    run = uuid.uuid4().hex[:8]
    ids = [f"{run}-{i}" for i in range(200)]
    deps = {i: rng.sample(ids[:n], k=min(n, rng.randint(0, 3))) for n, i in enumerate(ids)}
    order = ids[:]
    rng.shuffle(order)  # submitted in any order: the batch is sorted before it is written
    handles = bq.submit_many([
        {"id": i, "handler": "t.node", "payload": {"log": log}, "depends_on": deps[i]}
        for i in order
    ])
    for handle in handles:
        handle.get(timeout=120)
    runs = evidence.hmget("evidence:runs", ids)
    assert runs == ["1"] * 200
    at = positions(evidence, log)
    for task_id, before in deps.items():
        for dep in before:
            assert at[f"end:{dep}"] < at[f"start:{task_id}"], (dep, task_id)
    layers = bq.plan(ids)
    assert sorted(i for layer in layers for i in layer) == sorted(ids)
    depth = {i: n for n, layer in enumerate(layers) for i in layer}
    assert all(depth[d] < depth[i] for i, before in deps.items() for d in before)


def test_graph_and_dot(bq: BOQueue) -> None:
    log = new_log()
    a = bq.submit("t.node", {"log": log})
    b = bq.submit("t.node", {"log": log}, depends_on=[a])
    c = bq.submit("t.node", {"log": log}, depends_on=[b])
    c.get(timeout=30)
    # the graph reads the records, which the worker ends just after storing the result
    wait_until(lambda: bq.records.state(c.id) is TaskState.SUCCEEDED, 10,
               what="c's record to say SUCCEEDED")
    graph = bq.graph([b.id])  # expands both ways
    assert set(graph.nodes) == {a.id, b.id, c.id}
    assert sorted(graph.edges) == sorted([(a.id, b.id), (b.id, c.id)])
    assert graph.nodes[c.id].state == "SUCCEEDED"
    dot = graph.to_dot()
    assert dot.startswith("digraph") and f'"{a.id}" -> "{b.id}";' in dot


def test_children_tree_and_cascading_cancel(bq: BOQueue, evidence: redis.Redis) -> None:
    parent = bq.submit("t.spawner", {"children": 3})
    child_ids = parent.get(timeout=30)
    assert sorted(c.id for c in bq.children(parent.id)) == sorted(child_ids)
    tree = bq.tree(parent.id)
    assert tree.task.id == parent.id
    assert sorted(node.task.id for node in tree.children) == sorted(child_ids)
    assert all(node.task.parent_id == parent.id for node in tree.children)

    key = f"evidence:gate:{uuid.uuid4().hex}"
    root = bq.submit("t.gate", {"key": key})
    wait_until(lambda: evidence.exists(key + ":entered"), 20, what="the root to start")
    kid = bq.submit("bo_queue.sleep", {"seconds": 30, "steps": 300}, parent_id=root.id)
    grandkid = bq.submit("t.node", {"log": new_log()}, parent_id=kid.id, countdown=60)
    assert [info.id for info in bq.tree(root.id).walk()] == [root.id, kid.id, grandkid.id]
    assert bq.cancel(root.id) is TaskState.RUNNING  # the gate does not look: it runs on
    wait_until(lambda: bq.info(kid.id).state is TaskState.CANCELLED, 20, what="kid cancelled")
    assert bq.info(grandkid.id).state is TaskState.CANCELLED
    assert bq.info(grandkid.id).error == f"ancestor {root.id} cancelled"
    evidence.set(key, 1)
    assert root.get(timeout=20) == "opened"  # cancellation is cooperative; it never looked
