"""Task dependencies on fakeredis: the pure graph functions, the WAIT and SETTLE scripts
through RecordStore, and what BOQueue checks, writes and sends for `depends_on`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import fakeredis
import pytest

import bo_queue
from bo_queue import (
    BOQueue,
    DependencyError,
    Priority,
    TaskCancelledError,
    TaskRequest,
    TaskState,
    UnknownTaskError,
    ValidationError,
)
from bo_queue.core.dependencies import (
    DependencyGraph,
    GraphNode,
    check_acyclic,
    find_cycle,
    layers,
    read_graph,
)
from bo_queue.core.handle import TaskHandle
from bo_queue.core.keys import Keys
from bo_queue.core.message import Message
from bo_queue.core.records import RecordStore

TTL = 100
MSG = ("unit.deps.node", "default", Priority.NORMAL)  # handler, queue, priority for start()


# -- pure graph functions ------------------------------------------------------------


def test_find_cycle_returns_the_cycle_path() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_find_cycle_not_through_the_first_node() -> None:
    # 's' leads into the cycle without being on it: the path starts where the cycle does.
    assert find_cycle({"s": ["a"], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({"x": ["y"], "y": [], "p": ["q"], "q": ["p"]}) == ["p", "q", "p"]


def test_find_cycle_self_loop() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_find_cycle_none_for_a_dag() -> None:
    diamond = {"A": [], "B": ["A"], "C": ["A"], "D": ["B", "C"]}
    assert find_cycle(diamond) is None
    assert find_cycle({"a": ["outside"], "b": ["outside", "a"]}) is None  # leaves
    assert find_cycle({}) is None


def test_check_acyclic_names_a_self_dependency() -> None:
    with pytest.raises(DependencyError, match="task 'a' depends on itself"):
        check_acyclic({"b": [], "a": ["b", "a"]})


def test_check_acyclic_names_the_cycle() -> None:
    with pytest.raises(DependencyError) as caught:
        check_acyclic({"a": ["b"], "b": ["a"]})
    assert "a -> b -> a" in str(caught.value)
    with pytest.raises(DependencyError, match="x -> y -> z -> x"):
        check_acyclic({"root": ["x"], "x": ["y"], "y": ["z"], "z": ["x"]})


def test_check_acyclic_accepts_a_dag() -> None:
    check_acyclic({"A": [], "B": ["A"], "C": ["A", "B"], "D": ["B", "C", "elsewhere"]})


def test_layers_of_a_diamond() -> None:
    assert layers({"A": [], "B": ["A"], "C": ["A"], "D": ["B", "C"]}) == [["A"], ["B", "C"], ["D"]]


def test_layers_when_dependents_come_first() -> None:
    graph = {"D": ["B", "C"], "C": ["A"], "B": ["A"], "A": []}
    assert layers(graph) == [["A"], ["C", "B"], ["D"]]


def test_layers_ignore_dependencies_outside_the_graph() -> None:
    assert layers({"B": ["A"], "C": ["B", "gone"]}) == [["B"], ["C"]]
    assert layers({"x": ["y"], "z": ["w"]}) == [["x", "z"]]


def test_layers_keep_input_order_within_a_layer() -> None:
    assert layers({"z": [], "a": [], "m": ["z"], "b": ["a"]}) == [["z", "a"], ["m", "b"]]
    assert layers({"b": ["a"], "m": ["z"], "a": [], "z": []}) == [["a", "z"], ["b", "m"]]


def test_layers_place_a_node_after_its_deepest_dependency() -> None:
    # C depends on A directly and through B: it goes after B, not beside it.
    assert layers({"A": [], "B": ["A"], "C": ["A", "B"], "E": []}) == [["A", "E"], ["B"], ["C"]]


def test_layers_of_nothing() -> None:
    assert layers({}) == []


def test_layers_reject_a_cycle() -> None:
    with pytest.raises(DependencyError, match="a -> b -> a"):
        layers({"a": ["b"], "b": ["a"]})
    with pytest.raises(DependencyError, match="depends on itself"):
        layers({"a": ["a"]})


def test_layers_accept_any_iterable_of_dependencies() -> None:
    # The signature takes Iterable[str]: one-shot iterables (generators) must work too.
    graph = {"B": (d for d in ["A"]), "A": (d for d in [])}
    assert layers(graph) == [["A"], ["B"]]
    with pytest.raises(DependencyError, match="a -> b -> a"):
        check_acyclic({"a": (d for d in ["b"]), "b": (d for d in ["a"])})


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_a_long_chain_does_not_recurse(order: str) -> None:
    n = 5000
    chain = {f"n{i}": [f"n{i - 1}"] if i else [] for i in range(n)}
    if order == "backward":  # the deepest walk starts at once
        chain = dict(reversed(list(chain.items())))
    assert find_cycle(chain) is None
    check_acyclic(chain)
    assert layers(chain) == [[f"n{i}"] for i in range(n)]


def test_a_long_cycle_is_found() -> None:
    n = 5000
    ring = {f"n{i}": [f"n{(i + 1) % n}"] for i in range(n)}
    cycle = find_cycle(ring)
    assert cycle is not None
    assert cycle == [f"n{i}" for i in range(n)] + ["n0"]


def _diamond_graph() -> DependencyGraph:
    graph = DependencyGraph()
    for node, state in zip("ABCD", ["SUCCEEDED", "RUNNING", "QUEUED", "PENDING"], strict=True):
        graph.nodes[node] = GraphNode(node, "unit.deps.node", state)
    graph.depends_on = {"A": [], "B": ["A"], "C": ["A"], "D": ["B", "C"]}
    return graph


def test_graph_edges_and_layers() -> None:
    graph = _diamond_graph()
    assert graph.edges == [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")]
    assert graph.layers() == [["A"], ["B", "C"], ["D"]]


def test_to_dot() -> None:
    dot = _diamond_graph().to_dot()
    lines = dot.splitlines()
    assert lines[0] == 'digraph "tasks" {'
    assert lines[-1] == "}"
    assert dot.endswith("}\n")
    for node, state in zip("ABCD", ["SUCCEEDED", "RUNNING", "QUEUED", "PENDING"], strict=True):
        assert f'  "{node}" [label="unit.deps.node\\n{node}\\n{state}"];' in lines
    for a, b in [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")]:
        assert f'  "{a}" -> "{b}";' in lines
    assert sum("->" in line for line in lines) == 4


def test_to_dot_escapes_quotes() -> None:
    graph = DependencyGraph()
    graph.nodes['say "hi"'] = GraphNode('say "hi"', "h", "QUEUED")
    graph.nodes["b"] = GraphNode("b", "h", "PENDING")
    graph.depends_on = {'say "hi"': [], "b": ['say "hi"']}
    dot = graph.to_dot(name='my "dag"')
    assert dot.startswith('digraph "my \\"dag\\"" {\n')
    assert '  "say \\"hi\\"" [label="h\\nsay \\"hi\\"\\nQUEUED"];' in dot
    assert '  "say \\"hi\\"" -> "b";' in dot


# -- the WAIT and SETTLE scripts through RecordStore -----------------------------------


Settled = list[tuple[int, list[str]]]


@pytest.fixture
def settled() -> Settled:
    return []


@pytest.fixture
def store(fake: fakeredis.FakeRedis, settled: Settled) -> RecordStore:
    return RecordStore(
        fake, Keys("t"), ttl_s=TTL, on_settled=lambda n, ids: settled.append((n, ids))
    )


def make(store: RecordStore, task_id: str, **overrides: Any) -> dict[str, Any]:
    """Write a record the way Core.submit_plans does, through a pipeline."""
    fields: dict[str, Any] = {
        "id": task_id,
        "handler": "unit.deps.node",
        "queue": "default",
        "priority": Priority.NORMAL,
        "tags": (),
        "parent_id": None,
        "state": TaskState.QUEUED,
        "created_at": time.time(),
        "due_at": None,
        "expires_at": None,
    }
    fields.update(overrides)
    with store.redis.pipeline(transaction=False) as pipe:
        store.create(pipe, fields)
        pipe.execute()
    return fields


def message_for(task_id: str) -> Message:
    return Message(handler="unit.deps.node", payload={"id": task_id}, queue="default",
                   priority=3)


def park(
    store: RecordStore, task_id: str, depends_on: Sequence[str],
    on_dependency_failure: str = "cancel", **overrides: Any,
) -> list[Any]:
    """Create a PENDING record with dependencies and register it with wait_for in the same
    pipeline, as Core.submit_plans does; returns the WAIT script's reply."""
    fields: dict[str, Any] = {
        "id": task_id, "handler": "unit.deps.node", "queue": "default",
        "priority": Priority.NORMAL, "tags": (), "state": TaskState.PENDING,
        "created_at": time.time(), "depends_on": tuple(depends_on),
        "on_dependency_failure": on_dependency_failure,
    }
    fields.update(overrides)
    with store.redis.pipeline(transaction=False) as pipe:
        store.create(pipe, fields)
        index = len(pipe)
        store.wait_for(pipe, task_id, depends_on, message_for(task_id))
        replies = pipe.execute()
    return list(replies[index])


def state(store: RecordStore, task_id: str) -> TaskState | None:
    return store.state(task_id)


def error(store: RecordStore, task_id: str) -> str | None:
    return store.get_fields(task_id, "error")[0]


def test_wait_parks_and_the_last_success_releases(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    make(store, "B")
    assert park(store, "D", ["A", "B"]) == ["waiting"]
    assert state(store, "D") is TaskState.PENDING
    assert fake.smembers("t:task:D:waiting") == {"A", "B"}
    assert store.dependents(["A", "B"]) == [{"D"}, {"D"}]
    assert Message.decode(fake.hget("t:deps:parked", "D")) == message_for("D")
    assert fake.zcard("t:delayed") == 0

    assert store.transition("A", TaskState.SUCCEEDED, finished_at=time.time())
    assert state(store, "D") is TaskState.PENDING  # still waits on B
    assert fake.smembers("t:task:D:waiting") == {"B"}
    assert fake.hexists("t:deps:parked", "D")
    assert fake.zcard("t:delayed") == 0
    assert settled == []

    before = time.time()
    assert store.transition("B", TaskState.SUCCEEDED, finished_at=time.time())
    assert state(store, "D") is TaskState.QUEUED
    score = fake.zscore("t:delayed", "D")
    assert score is not None and before - 1 <= score <= time.time() + 1
    assert Message.decode(fake.hget("t:delayed:specs", "D")) == message_for("D")
    assert not fake.hexists("t:deps:parked", "D")
    assert fake.scard("t:task:D:waiting") == 0
    assert settled == [(1, [])]


def test_settling_twice_does_not_release_twice(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    assert park(store, "D", ["A"]) == ["waiting"]
    assert store.transition("A", TaskState.SUCCEEDED)
    assert settled == [(1, [])]
    # The release is sent and dropped from the schedule, as DelayedSubmissions does.
    fake.zrem("t:delayed", "D")
    fake.hdel("t:delayed:specs", "D")
    # Late or duplicate writers on the ended dependency change nothing.
    assert store.transition("A", TaskState.SUCCEEDED) is False
    assert store.transition("A", TaskState.FAILED, error="late") is False
    assert store.cancel("A", "late") is TaskState.SUCCEEDED
    assert store.start("A", "w", *MSG) == ("done", 0)
    assert fake.zcard("t:delayed") == 0
    assert not fake.hexists("t:delayed:specs", "D")
    assert state(store, "D") is TaskState.QUEUED
    assert settled == [(1, [])]


def test_dependency_registered_twice_waits_once(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    assert park(store, "D", ["A", "A"]) == ["waiting"]
    assert fake.smembers("t:task:D:waiting") == {"A"}
    assert store.transition("A", TaskState.SUCCEEDED)
    assert settled == [(1, [])]
    assert fake.zcard("t:delayed") == 1


def test_failed_dependency_cancels_dependents_transitively(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    make(store, "other")
    assert park(store, "B", ["A"]) == ["waiting"]
    assert park(store, "C", ["B", "other"]) == ["waiting"]
    assert park(store, "E", ["C"]) == ["waiting"]
    assert park(store, "unrelated", ["other"]) == ["waiting"]

    before = time.time()
    assert store.transition("A", TaskState.FAILED, error="boom", finished_at=time.time())
    assert settled == [(0, ["B", "C", "E"])]
    for task_id in ("B", "C", "E"):
        info = store.get(task_id)
        assert info is not None and info.state is TaskState.CANCELLED, task_id
        assert info.finished_at is not None
        assert info.finished_at.timestamp() >= before - 1
        assert store.is_cancelled(task_id), task_id
        assert 0 < fake.ttl(f"t:cancelled:{task_id}") <= TTL
        assert not fake.hexists("t:deps:parked", task_id)
    assert error(store, "B") == "dependency A FAILED"
    assert fake.get("t:cancelled:B") == "dependency A FAILED"
    assert error(store, "C") == "dependency B CANCELLED"
    assert error(store, "E") == "dependency C CANCELLED"
    assert fake.zcard("t:delayed") == 0
    assert state(store, "unrelated") is TaskState.PENDING
    assert fake.hexists("t:deps:parked", "unrelated")

    # C's other dependency succeeding later does not bring it back.
    assert store.transition("other", TaskState.SUCCEEDED)
    assert state(store, "C") is TaskState.CANCELLED
    assert fake.zrange("t:delayed", 0, -1) == ["unrelated"]
    assert settled == [(0, ["B", "C", "E"]), (1, [])]


@pytest.mark.parametrize("ending", [TaskState.CANCELLED, TaskState.EXPIRED])
def test_cancelled_or_expired_dependency_cancels_dependents(
    store: RecordStore, settled: Settled, ending: TaskState
) -> None:
    make(store, "A")
    park(store, "B", ["A"])
    assert store.transition("A", ending)
    assert state(store, "B") is TaskState.CANCELLED
    assert error(store, "B") == f"dependency A {ending.value}"
    assert settled == [(0, ["B"])]


def test_run_anyway_dependent_is_released_when_a_dependency_fails(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    assert park(store, "R", ["A"], on_dependency_failure="run") == ["waiting"]
    assert park(store, "X", ["A"]) == ["waiting"]
    assert store.transition("A", TaskState.FAILED, error="boom")
    assert state(store, "R") is TaskState.QUEUED
    assert fake.zrange("t:delayed", 0, -1) == ["R"]
    assert not fake.hexists("t:deps:parked", "R")
    assert state(store, "X") is TaskState.CANCELLED
    assert not store.is_cancelled("R")
    assert settled == [(1, ["X"])]


def test_run_anyway_waits_for_every_dependency_to_end(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    make(store, "B")
    park(store, "R", ["A", "B"], on_dependency_failure="run")
    assert store.transition("A", TaskState.FAILED)
    assert state(store, "R") is TaskState.PENDING
    assert fake.zcard("t:delayed") == 0
    assert settled == []
    assert store.transition("B", TaskState.SUCCEEDED)
    assert state(store, "R") is TaskState.QUEUED
    assert settled == [(1, [])]


def test_run_anyway_below_a_cancelled_dependent(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    park(store, "B", ["A"])
    park(store, "R", ["B"], on_dependency_failure="run")
    assert store.transition("A", TaskState.FAILED)
    assert state(store, "B") is TaskState.CANCELLED
    assert state(store, "R") is TaskState.QUEUED
    assert fake.zrange("t:delayed", 0, -1) == ["R"]
    assert settled == [(1, ["B"])]


def test_wait_for_a_succeeded_dependency_queues_now(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A", state=TaskState.SUCCEEDED)
    before = time.time()
    assert park(store, "D", ["A"]) == ["queued"]
    assert state(store, "D") is TaskState.QUEUED
    score = fake.zscore("t:delayed", "D")
    assert score is not None and before - 1 <= score <= time.time() + 1
    assert Message.decode(fake.hget("t:delayed:specs", "D")) == message_for("D")
    assert not fake.hexists("t:deps:parked", "D")
    assert not fake.exists("t:task:D:waiting")
    assert settled == []  # wait_for reports through its reply; Core.submit_plans acts on it


@pytest.mark.parametrize("ending", [TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED])
def test_wait_for_an_ended_dependency_cancels(
    store: RecordStore, fake: fakeredis.FakeRedis, ending: TaskState
) -> None:
    make(store, "A", state=ending)
    assert park(store, "D", ["A"]) == ["cancelled", "A", ending.value]
    assert state(store, "D") is TaskState.CANCELLED
    assert error(store, "D") == f"dependency A {ending.value}"
    assert fake.get("t:cancelled:D") == f"dependency A {ending.value}"
    assert not fake.hexists("t:deps:parked", "D")
    assert fake.zcard("t:delayed") == 0


def test_wait_for_an_unknown_dependency_cancels(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    assert park(store, "D", ["ghost"]) == ["cancelled", "ghost", "UNKNOWN"]
    assert state(store, "D") is TaskState.CANCELLED
    assert error(store, "D") == "dependency ghost UNKNOWN"
    assert not fake.hexists("t:deps:parked", "D")


def test_wait_for_an_ended_dependency_with_run_anyway(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    make(store, "A", state=TaskState.FAILED)
    make(store, "B")
    assert park(store, "R", ["A"], on_dependency_failure="run") == ["queued"]
    assert state(store, "R") is TaskState.QUEUED
    assert park(store, "S", ["A", "B"], on_dependency_failure="run") == ["waiting"]
    assert fake.smembers("t:task:S:waiting") == {"B"}


def test_wait_for_stops_at_the_first_ended_dependency(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    make(store, "F", state=TaskState.FAILED)
    assert park(store, "D", ["A", "F"]) == ["cancelled", "F", "FAILED"]
    assert not fake.hexists("t:deps:parked", "D")
    assert store.transition("A", TaskState.SUCCEEDED)
    assert state(store, "D") is TaskState.CANCELLED
    assert fake.zcard("t:delayed") == 0
    assert settled == []


def test_wait_sets_ttls_on_its_links(store: RecordStore, fake: fakeredis.FakeRedis) -> None:
    make(store, "A")
    park(store, "D", ["A"])
    assert 0 < fake.ttl("t:task:A:dependents") <= TTL
    # Parked, D and what it waits on never expire: A may be due long after D's retention.
    assert fake.ttl("t:task:D") == -1 and fake.ttl("t:task:D:waiting") == -1
    assert store.transition("A", TaskState.SUCCEEDED)
    assert 0 < fake.ttl("t:task:D") <= TTL  # released: its retention counts again


def test_links_live_as_long_as_a_dependency_due_later(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    make(store, "A", due_at=time.time() + 10 * TTL)  # its record lives ~11 TTLs
    park(store, "D", ["A"])
    assert fake.ttl("t:task:A:dependents") > 10 * TTL - 5


def test_cancel_of_a_waiting_dependent_cascades(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    park(store, "B", ["A"])
    park(store, "C", ["B"])
    assert store.cancel("B", "not needed") is TaskState.PENDING
    assert state(store, "B") is TaskState.CANCELLED
    assert error(store, "B") == "not needed"
    assert not fake.hexists("t:deps:parked", "B")
    # parked, B's record and its :waiting set had no expiry; cancelled, they have again
    assert 0 < fake.ttl("t:task:B") <= TTL and 0 < fake.ttl("t:task:B:waiting") <= TTL
    assert state(store, "C") is TaskState.CANCELLED
    assert error(store, "C") == "dependency B CANCELLED"
    assert not fake.hexists("t:deps:parked", "C")
    assert settled == [(0, ["C"])]
    # A succeeding afterwards releases nothing.
    assert store.transition("A", TaskState.SUCCEEDED)
    assert fake.zcard("t:delayed") == 0
    assert fake.hlen("t:delayed:specs") == 0
    assert settled == [(0, ["C"])]


def test_cancel_of_a_dependency_cascades(store: RecordStore, settled: Settled) -> None:
    make(store, "A")
    park(store, "B", ["A"])
    park(store, "C", ["B"])
    assert store.cancel("A", "stop") is TaskState.QUEUED
    assert [state(store, i) for i in "ABC"] == [TaskState.CANCELLED] * 3
    assert error(store, "B") == "dependency A CANCELLED"
    assert settled == [(0, ["B", "C"])]


def test_cancel_of_a_running_dependency_settles_when_the_worker_stops(
    store: RecordStore, settled: Settled
) -> None:
    make(store, "A")
    park(store, "B", ["A"])
    assert store.start("A", "w", *MSG) == ("run", 1)
    assert store.cancel("A", "stop") is TaskState.RUNNING
    assert state(store, "B") is TaskState.PENDING
    assert settled == []
    assert store.transition("A", TaskState.CANCELLED)
    assert state(store, "B") is TaskState.CANCELLED
    assert settled == [(0, ["B"])]


def test_start_of_a_flagged_dependency_settles_its_dependents(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    park(store, "B", ["A"])
    fake.set("t:cancelled:A", "stop")
    assert store.start("A", "w", *MSG) == ("cancelled", 0)
    assert state(store, "B") is TaskState.CANCELLED
    assert error(store, "B") == "dependency A CANCELLED"
    assert settled == [(0, ["B"])]


def test_released_dependent_due_later_stays_pending_until_due(
    store: RecordStore, fake: fakeredis.FakeRedis, settled: Settled
) -> None:
    make(store, "A")
    due = time.time() + 600
    assert park(store, "D", ["A"], due_at=due) == ["waiting"]
    assert store.transition("A", TaskState.SUCCEEDED)
    assert state(store, "D") is TaskState.PENDING
    assert fake.zscore("t:delayed", "D") == pytest.approx(due, abs=0.01)
    assert fake.hexists("t:delayed:specs", "D")
    assert not fake.hexists("t:deps:parked", "D")
    assert settled == [(1, [])]


def test_released_dependent_already_due_is_scored_now(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    make(store, "A")
    park(store, "D", ["A"], due_at=time.time() - 100)
    before = time.time()
    assert store.transition("A", TaskState.SUCCEEDED)
    assert state(store, "D") is TaskState.QUEUED
    score = fake.zscore("t:delayed", "D")
    assert score is not None and before - 1 <= score <= time.time() + 1


def test_wait_for_with_nothing_left_and_a_later_due_time(
    store: RecordStore, fake: fakeredis.FakeRedis
) -> None:
    make(store, "A", state=TaskState.SUCCEEDED)
    due = time.time() + 600
    assert park(store, "D", ["A"], due_at=due) == ["queued"]
    assert state(store, "D") is TaskState.PENDING
    assert fake.zscore("t:delayed", "D") == pytest.approx(due, abs=0.01)


def test_read_graph_on_the_store(store: RecordStore) -> None:
    make(store, "A")
    park(store, "B", ["A"])
    park(store, "C", ["A"])
    park(store, "D", ["B", "C"])
    make(store, "Z")
    graph = read_graph(store, ["A"])
    assert set(graph.nodes) == {"A", "B", "C", "D"}
    assert sorted(graph.edges) == [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")]
    assert graph.layers() == [["A"], ["B", "C"], ["D"]]
    assert graph.nodes["D"].state == "PENDING"
    only = read_graph(store, ["D"], expand=False)
    assert set(only.nodes) == {"D"}
    assert only.depends_on == {"D": ["B", "C"]}
    with pytest.raises(UnknownTaskError):
        read_graph(store, ["A", "nope"])


# -- BOQueue on fakeredis ----------------------------------------------------------------


@bo_queue.handler("unit.deps.node")
def _node(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return payload


@pytest.fixture
def sent(bq: BOQueue, fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids BOQueue hands to the broker, in order; nothing reaches a real broker."""
    out: list[str] = []

    def send(task_id: str, message: Any, pipe: Any = None) -> None:
        out.append(task_id)

    monkeypatch.setattr(bq, "send", send)
    return out


def node(task_id: str, *depends_on: str, **more: Any) -> dict[str, Any]:
    return {"handler": "unit.deps.node", "id": task_id, "depends_on": list(depends_on), **more}


def bmake(bq: BOQueue, task_id: str, **overrides: Any) -> None:
    make(bq.records, task_id, **overrides)


def test_submit_many_rejects_a_cycle_and_writes_nothing(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    with pytest.raises(DependencyError, match="a -> b -> c -> a"):
        bq.submit_many([node("a", "b"), node("b", "c"), node("c", "a"), node("free")])
    assert fake.keys("*") == []
    assert sent == []


def test_submit_many_rejects_a_self_dependency(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    with pytest.raises(DependencyError, match="task 'a' depends on itself"):
        bq.submit_many([node("a", "a")])
    assert fake.keys("*") == []
    assert sent == []


def test_unknown_dependency_is_rejected_and_nothing_written(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    bmake(bq, "known")
    before = sorted(fake.keys("*"))
    with pytest.raises(DependencyError, match="ghost"):
        bq.submit_many([node("x"), node("y", "x", "known", "ghost")])
    with pytest.raises(DependencyError, match=r"unknown dependencies .*: ghost"):
        bq.submit("unit.deps.node", {}, depends_on=["known", "ghost"])
    assert sorted(fake.keys("*")) == before
    assert sent == []


def test_a_request_id_in_use_is_rejected_in_a_dag(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    bmake(bq, "taken")
    before = {key: fake.type(key) for key in fake.keys("*")}
    record = fake.hgetall("unit:task:taken")
    with pytest.raises(ValidationError, match="already in use: taken"):
        bq.submit_many([node("new"), node("taken", "new")])
    assert {key: fake.type(key) for key in fake.keys("*")} == before
    assert fake.hgetall("unit:task:taken") == record
    assert sent == []


def test_a_request_id_in_use_is_rejected_without_dependencies(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    # The same check, in a batch where nobody has depends_on: the existing task's record
    # must not be overwritten, nor a second message sent under its id.
    bmake(bq, "taken", state=TaskState.SUCCEEDED)
    record = fake.hgetall("unit:task:taken")
    with pytest.raises(ValidationError, match="already in use: taken"):
        bq.submit_many([node("taken")])
    assert fake.hgetall("unit:task:taken") == record
    assert sent == []


def test_two_requests_with_the_same_id_are_rejected(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    with pytest.raises(ValidationError, match="same id"):
        bq.submit_many([node("dup"), node("dup")])
    with pytest.raises(ValidationError, match="same id"):
        bq.submit_many([node("a"), node("dup"), node("dup", "a")])
    assert fake.keys("*") == []
    assert sent == []


def test_task_request_dependency_fields() -> None:
    request = TaskRequest(handler="h", depends_on=["a", "b", "a"])
    assert request.depends_on == ("a", "b")
    assert TaskRequest(handler="h", depends_on="a").depends_on == ("a",)
    assert request.on_dependency_failure == "cancel"
    with pytest.raises(ValueError, match="on_dependency_failure"):
        TaskRequest(handler="h", on_dependency_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="id"):
        TaskRequest(handler="h", id="has space")


def test_depends_on_takes_handles(bq: BOQueue, sent: list[str]) -> None:
    bmake(bq, "a")
    handle = bq.submit("unit.deps.node", {}, depends_on=[TaskHandle(bq, "a"), "a"])
    assert bq.info(handle.id).depends_on == ("a",)


def test_a_dag_in_one_batch_runs_layer_by_layer(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    handles = bq.submit_many([node("D", "B", "C"), node("C", "A"), node("B", "A"), node("A")])
    assert [h.id for h in handles] == ["D", "C", "B", "A"]  # in request order
    assert sent == ["A"]
    assert [bq.info(i).state for i in "ABCD"] == [TaskState.QUEUED] + [TaskState.PENDING] * 3
    assert bq.info("D").depends_on == ("B", "C")
    assert fake.smembers("unit:task:D:waiting") == {"B", "C"}
    assert set(fake.hkeys("unit:deps:parked")) == {"B", "C", "D"}
    assert bq.plan(["A", "B", "C", "D"]) == [["A"], ["B", "C"], ["D"]]

    assert bq.records.transition("A", TaskState.SUCCEEDED)
    assert sorted(sent) == ["A", "B", "C"]
    assert bq.delays.pending() == 0  # sent and dropped from the schedule
    assert bq.info("D").state is TaskState.PENDING
    assert bq.records.transition("B", TaskState.SUCCEEDED)
    assert bq.info("D").state is TaskState.PENDING
    assert bq.records.transition("C", TaskState.SUCCEEDED)
    assert sent[-1] == "D" and len(sent) == 4
    assert bq.info("D").state is TaskState.QUEUED


def test_depending_on_a_succeeded_task_is_sent_at_once(bq: BOQueue, sent: list[str]) -> None:
    bmake(bq, "A", state=TaskState.SUCCEEDED)
    handle = bq.submit("unit.deps.node", {"x": 1}, depends_on=["A"])
    assert sent == [handle.id]
    assert handle.state is TaskState.QUEUED
    assert bq.delays.pending() == 0


def test_depending_on_a_failed_task_is_cancelled_at_once(
    bq: BOQueue, sent: list[str]
) -> None:
    bmake(bq, "A", state=TaskState.FAILED)
    handle = bq.submit("unit.deps.node", {}, depends_on=["A"])
    assert sent == []
    assert handle.state is TaskState.CANCELLED
    meta = bq.results.fetch(handle.id)  # the revocation wakes anyone in get()
    assert meta is not None and meta["status"] == "REVOKED"
    with pytest.raises(TaskCancelledError) as caught:
        handle.get(timeout=0)
    assert "dependency A FAILED" in str(caught.value)


def test_a_failing_dependency_wakes_cancelled_dependents(
    bq: BOQueue, sent: list[str]
) -> None:
    bq.submit_many([node("A"), node("B", "A"), node("C", "B")])
    assert bq.records.transition("A", TaskState.FAILED, error="boom")
    for task_id, reason in [("B", "dependency A FAILED"), ("C", "dependency B CANCELLED")]:
        assert bq.info(task_id).state is TaskState.CANCELLED
        meta = bq.results.fetch(task_id)
        assert meta is not None and meta["status"] == "REVOKED", task_id
        with pytest.raises(TaskCancelledError, match=reason):
            TaskHandle(bq, task_id).get(timeout=0)
    assert sent == ["A"]


def test_dependent_with_a_countdown_waits_for_its_due_time(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: list[str]
) -> None:
    bmake(bq, "A")
    before = time.time()
    handle = bq.submit("unit.deps.node", {}, depends_on=["A"], countdown=600)
    assert bq.records.transition("A", TaskState.SUCCEEDED)
    assert sent == []
    assert handle.state is TaskState.PENDING
    assert fake.zscore(bq.keys.delayed, handle.id) == pytest.approx(before + 600, abs=5)


def test_cancel_reaches_subtasks_and_dependents(bq: BOQueue, sent: list[str]) -> None:
    bq.submit_many([node("P"), node("kid", parent_id="P"), node("D", "P"), node("E", "D")])
    assert bq.cancel("P", reason="enough") is TaskState.CANCELLED
    assert bq.info("P").error == "enough"
    assert bq.info("kid").state is TaskState.CANCELLED
    assert (bq.info("kid").error or "").endswith(" P cancelled")  # names the cancelled root
    assert bq.info("D").state is TaskState.CANCELLED
    assert bq.info("D").error == "dependency P CANCELLED"
    assert bq.info("E").error == "dependency D CANCELLED"
    with pytest.raises(TaskCancelledError, match="dependency P CANCELLED"):
        TaskHandle(bq, "D").get(timeout=0)
    assert bq.records.get_fields("D", "state") == ["CANCELLED"]


def test_plan_over_records(bq: BOQueue) -> None:
    bmake(bq, "A")
    bmake(bq, "B", depends_on=("A",))
    bmake(bq, "C", depends_on=("A",))
    bmake(bq, "D", depends_on=("B", "C"))
    assert bq.plan(["D", "C", "B", "A"]) == [["A"], ["C", "B"], ["D"]]
    assert bq.plan(["A", "B", "C", "D", "A"]) == [["A"], ["B", "C"], ["D"]]
    # Only the tasks asked for: dependencies outside them are taken as done.
    assert bq.plan(["D", "B"]) == [["B"], ["D"]]
    with pytest.raises(UnknownTaskError):
        bq.plan(["A", "nope"])


def test_graph_expands_up_and_down(bq: BOQueue) -> None:
    store = bq.records
    make(store, "A")
    park(store, "B", ["A"])
    park(store, "C", ["A"])
    park(store, "D", ["B", "C"])
    park(store, "E", ["D"])
    make(store, "Z")  # not connected
    for start in (["B"], ["E"], ["A"], ["C", "B"]):
        graph = bq.graph(start)
        assert set(graph.nodes) == {"A", "B", "C", "D", "E"}, start
        assert sorted(graph.edges) == [
            ("A", "B"), ("A", "C"), ("B", "D"), ("C", "D"), ("D", "E")
        ], start
        assert graph.depends_on["D"] == ["B", "C"]
        assert [set(layer) for layer in graph.layers()] == [{"A"}, {"B", "C"}, {"D"}, {"E"}]
    graph = bq.graph(["B"])
    assert graph.nodes["B"].handler == "unit.deps.node"
    assert graph.nodes["B"].state == "PENDING"
    assert graph.nodes["A"].state == "QUEUED"
    dot = graph.to_dot()
    assert '"A" -> "B";' in dot and '"D" -> "E";' in dot and '"Z"' not in dot
    assert set(bq.graph(["Z"]).nodes) == {"Z"}
    with pytest.raises(UnknownTaskError):
        bq.graph(["nope"])


def test_graph_drops_edges_to_expired_dependencies(bq: BOQueue) -> None:
    bmake(bq, "A")
    bmake(bq, "D", depends_on=("A", "gone"))
    graph = bq.graph(["D"])
    assert set(graph.nodes) == {"A", "D"}
    assert graph.depends_on == {"D": ["A"], "A": []}
    assert bq.plan(["D"]) == [["D"]]


def test_graph_shows_dependents_submitted_after_the_dependency_ended(
    bq: BOQueue, sent: list[str]
) -> None:
    # B depends on A, but was submitted once A had already succeeded (WAIT does not link
    # it into A's dependents then). graph(A) must still show "what depends on them".
    bmake(bq, "A", state=TaskState.SUCCEEDED)
    b = bq.submit("unit.deps.node", {}, depends_on=["A"])
    assert set(bq.graph([b.id]).nodes) == {"A", b.id}
    graph = bq.graph(["A"])
    assert set(graph.nodes) == {"A", b.id}
    assert graph.edges == [("A", b.id)]


# -- lineage: children, tree, descendants ----------------------------------------------


def _family(bq: BOQueue) -> None:
    now = time.time()
    bmake(bq, "P", created_at=now - 10)
    bmake(bq, "c2", parent_id="P", created_at=now - 9)  # older than c1
    bmake(bq, "c1", parent_id="P", created_at=now - 8)
    bmake(bq, "g", parent_id="c1", created_at=now - 7)
    bmake(bq, "gg", parent_id="g", created_at=now - 6)


def test_children_oldest_first(bq: BOQueue, fake: fakeredis.FakeRedis) -> None:
    _family(bq)
    assert [c.id for c in bq.children("P")] == ["c2", "c1"]
    assert [c.id for c in bq.children("c1")] == ["g"]
    assert bq.children("gg") == []
    fake.sadd(bq.keys.children("P"), "expired")  # a link outliving its child's record
    assert [c.id for c in bq.children("P")] == ["c2", "c1"]
    with pytest.raises(UnknownTaskError):
        bq.children("nope")


def test_tree(bq: BOQueue) -> None:
    _family(bq)
    tree = bq.tree("P")
    assert tree.task.id == "P"
    assert tree.task.children == ("c1", "c2")
    assert [child.task.id for child in tree.children] == ["c2", "c1"]
    assert [info.id for info in tree.walk()] == ["P", "c2", "c1", "g", "gg"]
    shallow = bq.tree("P", max_depth=1)
    assert [info.id for info in shallow.walk()] == ["P", "c2", "c1"]
    assert all(child.children == () for child in shallow.children)
    assert [info.id for info in bq.tree("P", max_depth=0).walk()] == ["P"]
    assert [info.id for info in bq.tree("c1").walk()] == ["c1", "g", "gg"]
    with pytest.raises(UnknownTaskError):
        bq.tree("nope")


def test_descendants_breadth_first(bq: BOQueue, fake: fakeredis.FakeRedis) -> None:
    _family(bq)
    assert bq.records.descendants("P") == ["c1", "c2", "g", "gg"]
    assert bq.records.descendants("gg") == []
    fake.sadd(bq.keys.children("gg"), "P")  # a link cycle must not loop
    assert bq.records.descendants("P") == ["c1", "c2", "g", "gg"]
    assert bq.records.descendants("g") == ["gg", "P", "c1", "c2"]
    tree = bq.tree("P", max_depth=6)  # bounded by max_depth, not by the cycle
    assert [info.id for info in tree.walk()][:5] == ["P", "c2", "c1", "g", "gg"]


def test_cancel_reaches_grandchildren(bq: BOQueue, sent: list[str]) -> None:
    _family(bq)
    assert bq.cancel("P") is TaskState.CANCELLED
    for task_id in ("c1", "c2", "g", "gg"):
        assert bq.info(task_id).state is TaskState.CANCELLED, task_id
        assert (bq.info(task_id).error or "").endswith(" P cancelled"), task_id
