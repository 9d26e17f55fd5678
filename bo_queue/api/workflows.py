"""Workflows: start runs from a JSON definition, and watch, pause, resume, signal and
cancel them (bq.workflows)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query

from bo_queue.api.models import WorkflowRunRequest
from bo_queue.api.routing import COMMON, Caller, responses
from bo_queue.workflows.models import WorkflowRun, WorkflowSpec, WorkflowStatus

router = APIRouter(prefix="/workflows", tags=["workflows"],
                   responses={**COMMON, **responses(413)})

RunId = Annotated[str, Path(description="a workflow run's id",
                                  pattern=r"^[A-Za-z0-9._@-]{1,100}$")]
NOT_FOUND = responses(404)
CHANGE = responses(404, 409)


@router.post("", status_code=201, response_model=WorkflowRun, responses=responses(409),
             summary="Start a workflow run")
def run(bq: Caller, body: WorkflowRunRequest) -> WorkflowRun:
    """Start a run of `definition` with `inputs`. A step handler no worker declared, an
    `input.<key>` the inputs lack, two steps of one name, a condition that reads a step
    that has not run, or an `id` in use is 422, and nothing is started."""
    return bq.workflows.run(body.definition, body.inputs, workflow_id=body.id)


@router.get("", response_model=list[WorkflowRun], summary="List workflow runs")
def list_runs(
    bq: Caller, status: WorkflowStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="runs read, newest first")] = 100,
) -> list[WorkflowRun]:
    """The newest runs first, those with `status` if given (of the `limit` newest)."""
    return bq.workflows.list(status, limit)


@router.get("/{workflow_id}", response_model=WorkflowRun, responses=NOT_FOUND,
            summary="A workflow run's status")
def status(bq: Caller, workflow_id: RunId) -> WorkflowRun:
    """Its status, position, context (inputs, vars, each step's result) and steps."""
    return bq.workflows.status(workflow_id)


@router.get("/{workflow_id}/definition", response_model=WorkflowSpec, responses=NOT_FOUND,
            summary="The definition a run follows")
def definition(bq: Caller, workflow_id: RunId) -> WorkflowSpec:
    return bq.workflows.definition(workflow_id)


@router.post("/{workflow_id}/pause", response_model=WorkflowRun, responses=CHANGE,
             summary="Pause: start no new step")
def pause(bq: Caller, workflow_id: RunId) -> WorkflowRun:
    """The step in flight finishes and is recorded. A run that has ended is 409."""
    return bq.workflows.pause(workflow_id)


@router.post("/{workflow_id}/resume", response_model=WorkflowRun, responses=CHANGE,
             summary="Resume a paused run")
def resume(bq: Caller, workflow_id: RunId) -> WorkflowRun:
    return bq.workflows.resume(workflow_id)


@router.post("/{workflow_id}/cancel", response_model=WorkflowRun, responses=CHANGE,
             summary="Cancel a run")
def cancel(
    bq: Caller, workflow_id: RunId,
    terminate: Annotated[bool, Query(description="kill its running steps (SIGTERM)")] = False,
) -> WorkflowRun:
    """Its running steps and pending advance are cancelled; nothing more starts. A run
    that has ended comes back as it is."""
    return bq.workflows.cancel(workflow_id, terminate=terminate)


@router.patch("/{workflow_id}/vars", response_model=WorkflowRun, responses=CHANGE,
              summary="Set vars.<key> in a run's context")
def set_vars(
    bq: Caller, workflow_id: RunId,
    values: Annotated[dict[str, Any], Body(description="keys to set, with JSON values",
                                           examples=[{"approved": True}])],
) -> WorkflowRun:
    """A shallow merge into `vars`; a wait on `vars.<key>` is checked again at once."""
    return bq.workflows.set_vars(workflow_id, **values)


@router.post("/{workflow_id}/wait", response_model=WorkflowRun,
             responses=responses(404, 504), summary="Wait for a run to end")
def wait(
    bq: Caller, workflow_id: RunId,
    timeout: Annotated[float, Query(gt=0, le=60, description="seconds to wait (504 past "
                                    "it; the run goes on)")] = 30.0,
) -> WorkflowRun:
    """The run once it has SUCCEEDED, FAILED or been CANCELLED."""
    return bq.workflows.wait(workflow_id, timeout=timeout)
