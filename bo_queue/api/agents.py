"""Pull mode over HTTP: pull task types, agents, and the claim/complete cycle (bq.agents).

An external agent registers with its capabilities, claims the next task (200, or 204 when
there is none for it), heartbeats while it works (its leases are extended; the reply
names tasks cancelled meanwhile), and completes, fails, cancels or releases the task. The task's
producer reads the result as for any task (`GET /tasks/{id}/result`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from bo_queue.agents import (
    MAX_CAPABILITIES,
    MAX_ERROR,
    MAX_NAME,
    AgentHeartbeat,
    AgentInfo,
    ClaimedTask,
    PullType,
)
from bo_queue.api.routing import COMMON, Caller, responses
from bo_queue.core.records import TaskInfo
from bo_queue.validation import MAX_HORIZON_S, TASK_ID

router = APIRouter(tags=["agents"], responses={**COMMON, **responses(413)})

AgentId = Annotated[str, Path(description="an agent id", pattern=TASK_ID)]
TaskId = Annotated[str, Path(description="a task id", pattern=TASK_ID)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Lease = Annotated[float, Field(gt=0, le=MAX_HORIZON_S, description="seconds")]


class TypeDeclaration(BaseModel):
    """A pull task type (bq.agents.declare_type)."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(examples=["lab.synthesize"])
    requires: list[Name] = Field(default_factory=list, max_length=MAX_CAPABILITIES,
                                 description="capabilities an agent must declare")
    lease_s: Lease | None = Field(default=None, description="how long a claim holds a task "
                                  "without a heartbeat (default 24 h)")


class AgentRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TASK_ID, examples=["robot-1"])
    kind: Name = "agent"
    capabilities: list[Name] = Field(default_factory=list, max_length=MAX_CAPABILITIES)


class Unregistered(BaseModel):
    """DELETE /agents/{id}: the tasks it held, now back in the queue."""

    id: str
    given_back: list[str]


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_types: list[Name] | None = Field(
        default=None, max_length=1000,
        description="default: every pull type whose capabilities the agent declared")
    lease_s: Lease | None = None


class AgentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(pattern=TASK_ID)


class CompleteBody(AgentBody):
    result: Any = Field(default=None, description="any JSON: what get() returns")


class FailBody(AgentBody):
    error: str = Field(max_length=MAX_ERROR, examples=["the rig jammed"])
    error_type: str = Field(default="Exception", max_length=MAX_NAME,
                            pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
                            description="the remote type get() reports (Name or module.Name)")
    traceback: str | None = Field(default=None, max_length=MAX_ERROR)


class CancelBody(AgentBody):
    reason: str = Field(default="cancelled by agent", min_length=1, max_length=MAX_ERROR,
                        examples=["sample contaminated"])


HELD = responses(404, 409, 410)


@router.post("/agent-types", status_code=201, response_model=PullType,
             summary="Declare a pull task type")
def declare_type(bq: Caller, body: TypeDeclaration) -> PullType:
    """Tasks of this type wait for agents instead of workers; submit them as any task
    (`POST /tasks`). A name workers serve as a handler is 422."""
    return bq.agents.declare_type(body.name, requires=body.requires, lease_s=body.lease_s)


@router.get("/agent-types", response_model=list[PullType], summary="Pull task types")
def list_types(bq: Caller) -> list[PullType]:
    return bq.agents.types()


@router.post("/agents", status_code=201, response_model=AgentInfo,
             summary="Register (or update) an agent")
def register(bq: Caller, body: AgentRegistration) -> AgentInfo:
    return bq.agents.register(body.id, body.kind, body.capabilities)


@router.get("/agents", response_model=list[AgentInfo], summary="Agents")
def list_agents(bq: Caller) -> list[AgentInfo]:
    """Every agent: kind, capabilities, last heartbeat, alive, the tasks it holds."""
    return bq.agents.agents()


@router.delete("/agents/{agent_id}", response_model=Unregistered,
               summary="Unregister an agent (its tasks go back to the queue)")
def unregister(bq: Caller, agent_id: AgentId) -> Unregistered:
    return Unregistered(id=agent_id, given_back=bq.agents.unregister(agent_id))


@router.post("/agents/{agent_id}/heartbeat", response_model=AgentHeartbeat,
             summary="An agent is alive: extend its leases")
def heartbeat(bq: Caller, agent_id: AgentId) -> AgentHeartbeat:
    """`held`: the tasks it still holds; `cancelled`: held tasks cancelled since (stop
    working on them). A task in neither went back to the queue: its lease ran out."""
    return bq.agents.heartbeat(agent_id)


@router.post(
    "/agents/{agent_id}/claim", response_model=ClaimedTask,
    responses={204: {"description": "no task for this agent now"}, **responses(409)},
    summary="Claim the next task",
)
def claim(
    bq: Caller, agent_id: AgentId,
    body: Annotated[ClaimRequest | None, Body()] = None,
) -> ClaimedTask | Response:
    """The highest-priority, oldest task among `task_types` that the agent may take, now
    RUNNING and held by it under a lease; 204 when there is none. A type whose required
    capabilities the agent has not declared is 409 (AgentError)."""
    request = body or ClaimRequest()
    task = bq.agents.claim(agent_id, request.task_types, request.lease_s)
    return Response(status_code=204) if task is None else task


@router.post("/tasks/{task_id}/complete", response_model=TaskInfo, responses=HELD,
             summary="An agent finished a task it holds")
def complete(bq: Caller, task_id: TaskId, body: CompleteBody) -> TaskInfo:
    """Stores `result` and ends the task SUCCEEDED. 409 (NotHeldError) if the agent does
    not hold it; 410 (TaskCancelledError) if it was cancelled."""
    bq.agents.complete(task_id, body.agent_id, body.result)
    return bq.info(task_id)


@router.post("/tasks/{task_id}/fail", response_model=TaskInfo, responses=HELD,
             summary="An agent could not do a task it holds")
def fail(bq: Caller, task_id: TaskId, body: FailBody) -> TaskInfo:
    """Ends the task FAILED (`GET /tasks/{id}/result` then answers 409 with
    `error_type: error`); it enters the failed registry."""
    bq.agents.fail(task_id, body.agent_id, body.error, error_type=body.error_type,
                   traceback=body.traceback)
    return bq.info(task_id)


@router.post("/tasks/{task_id}/agent-cancel", response_model=TaskInfo, responses=HELD,
             summary="An agent cancels a task it holds")
def agent_cancel(bq: Caller, task_id: TaskId, body: CancelBody) -> TaskInfo:
    """Ends the task CANCELLED with `reason` (`GET /tasks/{id}/result` then answers 410);
    its dependents are cancelled, or run if they said on_dependency_failure="run". 409
    (NotHeldError) if the agent does not hold it."""
    bq.agents.cancel(task_id, body.agent_id, body.reason)
    return bq.info(task_id)


@router.post("/tasks/{task_id}/release", response_model=TaskInfo, responses=HELD,
             summary="An agent gives a task back")
def release(bq: Caller, task_id: TaskId, body: AgentBody) -> TaskInfo:
    """Back to the queue for another agent, in its old place (or CANCELLED, if it was
    cancelled meanwhile)."""
    bq.agents.release(task_id, body.agent_id)
    return bq.info(task_id)
