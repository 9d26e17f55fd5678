"""Task dependencies: `depends_on` at submit, cycle detection, execution plans, graphs.

A task with dependencies is written PENDING and parked: its message waits in Redis, never
on a worker. Each dependency keeps the set of its dependents; each dependent the set of
dependencies it still waits on. The script that ends a task (records.py: every terminal
transition and every cancel runs `settle` in the same script) walks its dependents: a
SUCCEEDED dependency is crossed off, and a dependent with nothing left to wait on moves
to the held-submission schedule (bo_queue.core.delays), due now, from where a worker sends it
under a lease. A FAILED, CANCELLED or EXPIRED dependency cancels its dependents with the
reason, transitively, unless a dependent asked to run anyway. Crossing off and releasing
happen in one script, so a dependent is released exactly once and none is forgotten,
whichever order dependencies end and dependents register in. The Lua is in lua/
(dependencies.lua, settle.lua, dependencies_wait.lua).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bo_queue.errors import DependencyError, UnknownTaskError

if TYPE_CHECKING:
    from bo_queue.core.records import RecordStore

OnDependencyFailure = Literal["cancel", "run"]


@dataclass(frozen=True)
class SettledReply:
    """The reply of a script that can end tasks (records' start, cancel and transition, the
    pull scripts): its own value and a second one, then what settling dependents did."""

    value: Any
    extra: Any  # None if the script gave none
    released: int  # dependents released to the held-submission schedule, to be sent
    cancelled: list[str]  # dependents cancelled (their records say why)


def settled_reply(reply: Sequence[Any]) -> SettledReply:
    """Read {value, extra, released, cancelled id...}, as lua/settle.lua's `reply` makes it."""
    return SettledReply(reply[0], reply[1], int(reply[2]), [str(i) for i in reply[3:]])


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle in `graph` (node -> the nodes it depends on) as [a, b, ..., a], or None.
    Nodes that appear only as dependencies are leaves."""
    colour: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if colour.get(start):
            continue
        path: list[str] = [start]
        stack = [iter(graph.get(start, ()))]
        colour[start] = 1
        while stack:
            node = next(stack[-1], None)
            if node is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour.get(node) == 1:
                return [*path[path.index(node):], node]
            elif not colour.get(node):
                colour[node] = 1
                path.append(node)
                stack.append(iter(graph.get(node, ())))
    return None


def check_acyclic(graph: Mapping[str, Iterable[str]]) -> None:
    """DependencyError naming the cycle (or the task that depends on itself), if any."""
    graph = {node: list(deps) for node, deps in graph.items()}
    for node, deps in graph.items():
        if node in set(deps):
            raise DependencyError(f"task {node!r} depends on itself")
    cycle = find_cycle(graph)
    if cycle:
        path = " -> ".join(cycle)
        raise DependencyError(f"dependency cycle: {path} (each depends on the next)")


def layers(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Topological layers of the nodes of `graph`: every node comes after all of its
    dependencies that are nodes too (others are taken as given). Order within a layer
    follows `graph`'s order. DependencyError on a cycle."""
    graph = {node: list(ds) for node, ds in graph.items()}  # any iterable, read once
    check_acyclic(graph)
    deps = {node: [d for d in dict.fromkeys(ds) if d in graph] for node, ds in graph.items()}
    depth: dict[str, int] = {}
    for node in graph:
        stack = [node]
        while stack:  # iterative: a 10 000-task chain must not hit the recursion limit
            top = stack[-1]
            todo = [d for d in deps[top] if d not in depth]
            if todo:
                stack.extend(todo)
                continue
            depth[top] = 1 + max((depth[d] for d in deps[top]), default=-1)
            stack.pop()
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in graph:
        out[depth[node]].append(node)
    return out


def check_added(records: RecordStore, task_id: str, depends_on: Sequence[str]) -> None:
    """DependencyError if `task_id` depending on `depends_on` as well closes a cycle:
    if it is among what they depend on, transitively (bq.add_dependency)."""
    if task_id in depends_on:
        raise DependencyError(f"task {task_id!r} depends on itself")
    reached_from = dict.fromkeys(depends_on, task_id)  # task -> the one that depends on it
    frontier = list(depends_on)
    while frontier:
        found = []
        for node, info in zip(frontier, records.get_many(frontier), strict=True):
            for dep in info.depends_on if info is not None else ():
                if dep == task_id:  # the path back: task_id -> ... -> node -> task_id
                    path = [node]
                    while path[-1] != task_id:
                        path.append(reached_from[path[-1]])
                    cycle = " -> ".join([*reversed(path), task_id])
                    raise DependencyError(f"dependency cycle: {cycle} (each depends on the next)")
                if dep not in reached_from:
                    reached_from[dep] = node
                    found.append(dep)
        frontier = found


@dataclass(frozen=True)
class GraphNode:
    id: str
    handler: str
    state: str


@dataclass
class DependencyGraph:
    """Tasks and their `depends_on` edges, as `bq.graph()` returns them."""

    nodes: dict[str, GraphNode] = field(default_factory=dict)
    depends_on: dict[str, list[str]] = field(default_factory=dict)

    @property
    def edges(self) -> list[tuple[str, str]]:
        """(dependency, dependent) pairs: the dependency runs first."""
        return [(dep, node) for node, deps in self.depends_on.items() for dep in deps]

    def layers(self) -> list[list[str]]:
        return layers({node: self.depends_on.get(node, []) for node in self.nodes})

    def to_dot(self, name: str = "tasks") -> str:
        """Graphviz DOT text: one box per task (handler and state), an arrow per edge."""
        lines = [f"digraph {_quote(name)} {{", "  rankdir=LR;", "  node [shape=box];"]
        for node in self.nodes.values():
            label = f"{node.handler}\\n{node.id}\\n{node.state}"
            lines.append(f"  {_quote(node.id)} [label={_quote(label)}];")
        lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in self.edges]
        lines.append("}")
        return "\n".join(lines) + "\n"


def read_graph(records: RecordStore, task_ids: list[str], expand: bool = True) -> DependencyGraph:
    """The graph of `task_ids` from their records; with `expand`, also every task they
    depend on and every task that depends on them, transitively."""
    graph = DependencyGraph()
    asked = frontier = list(dict.fromkeys(task_ids))
    while frontier:
        infos = records.get_many(frontier)
        downstream = records.dependents(frontier) if expand else []
        for task_id, info in zip(frontier, infos, strict=True):
            if info is None:
                if task_id in asked:
                    raise UnknownTaskError(task_id)
                continue  # a linked task past its retention
            graph.nodes[task_id] = GraphNode(task_id, info.handler, info.state.value)
            graph.depends_on[task_id] = list(info.depends_on)
        if not expand:
            break
        linked = [d for i in infos if i is not None for d in i.depends_on]
        linked += [d for found in downstream for d in sorted(found)]
        frontier = [i for i in dict.fromkeys(linked) if i not in graph.nodes]
    if expand:  # a dependency past its retention has no record: drop edges to it
        for node, deps in graph.depends_on.items():
            graph.depends_on[node] = [d for d in deps if d in graph.nodes]
    return graph


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'
