"""Lineage and dependencies: a task's subtasks (children, tree), the dependency graph
around tasks, and their execution plan (bq.children, bq.tree, bq.graph, bq.plan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from bo_queue.api.models import GraphNode, TaskGraph
from bo_queue.api.routing import COMMON, Caller, responses
from bo_queue.api.tasks import TaskId
from bo_queue.core.records import TaskInfo, TaskTree
from bo_queue.states import TaskState

router = APIRouter(tags=["tasks"], responses={**COMMON, **responses(404)})

TaskIds = Annotated[list[str], Query(min_length=1, max_length=1000,
                                     description="task ids (repeat the parameter)")]


@router.get("/tasks/{task_id}/children", response_model=list[TaskInfo],
            summary="A task's direct subtasks")
def children(bq: Caller, task_id: TaskId) -> list[TaskInfo]:
    """Tasks it spawned (ctx.spawn) or that named it as `parent_id`, oldest first."""
    return bq.children(task_id)


@router.get("/tasks/{task_id}/tree", response_model=TaskTree,
            summary="A task and its subtasks, as a tree")
def tree(bq: Caller, task_id: TaskId,
         max_depth: Annotated[int, Query(ge=0, le=20)] = 20) -> TaskTree:
    return bq.tree(task_id, max_depth)


@router.get("/graph", response_model=TaskGraph, summary="The dependency graph around tasks")
def graph(bq: Caller, ids: TaskIds) -> TaskGraph:
    """The tasks named, what they depend on and what depends on them, transitively. An
    unknown id is 404."""
    found = bq.graph(ids)
    return TaskGraph(
        nodes=[GraphNode(id=n.id, handler=n.handler, state=TaskState(n.state))
               for n in found.nodes.values()],
        edges=found.edges, layers=found.layers(), dot=found.to_dot(),
    )


@router.get("/plan", response_model=list[list[str]], summary="The execution plan of tasks")
def plan(bq: Caller, ids: TaskIds) -> list[list[str]]:
    """Topological layers of the tasks named (their edges among themselves): each layer
    can run together once the layers before it are done, e.g. [["a"], ["b", "c"]]."""
    return bq.plan(ids)
