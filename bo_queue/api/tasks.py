"""Tasks: submit, look up, wait for results, cancel, delete, list, and the failed registry.

The hot routes (submit, submit a batch, a record, a result) are `async def` on the
caller's AsyncBOQueue, so a request never leaves the loop; the rest are plain `def` on
its BOQueue, run in FastAPI's thread pool.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from fastapi.responses import JSONResponse

from bo_queue.api.models import CancelledTasks, DependencyBody, TaskResult
from bo_queue.api.routing import COMMON, AsyncCaller, AsyncCreator, Caller, responses
from bo_queue.client import TaskRequest
from bo_queue.core.records import TaskInfo
from bo_queue.core.requests import TaskUpdate
from bo_queue.errors import ResultTimeoutError, ValidationError
from bo_queue.states import TaskState

# A filter in the URL, not the metadata itself: percent-encoded, 1,024 characters stay
# within what servers and proxies take in a request line (uvicorn: 16 KiB, nginx: 8 KiB).
MAX_METADATA_FILTER = 1024

router = APIRouter(tags=["tasks"], responses={**COMMON, **responses(413)})

TaskId = Annotated[str, Path(description="a task id",
                                   pattern=r"^[A-Za-z0-9._@-]{1,128}$")]
Terminate = Annotated[bool, Query(description="kill a RUNNING task (SIGTERM) instead of "
                                              "letting it see ctx.cancelled")]


@router.post("/tasks", status_code=201, response_model=TaskInfo,
             responses=responses(409), summary="Submit a task")
async def submit(aq: AsyncCaller, request: TaskRequest, created_by: AsyncCreator) -> TaskInfo:
    """Queue one task. An unknown handler or queue, a bad priority, a payload over the
    limit, an eta in the past, ... are 422 and nothing is queued; an unknown dependency
    is 409 (DependencyError). The record keeps `name`, `description` and `metadata`, and
    the API key's name as `created_by`."""
    try:
        handle = (await aq.submit_many([request], created_by=created_by))[0]
    except ValidationError as exc:  # submit_many names the request's index; there is one
        exc.args = (str(exc).removeprefix("request 0: "),)
        raise
    return await aq.info(handle.id)


@router.post("/tasks/batch", status_code=201, response_model=list[TaskInfo],
             responses=responses(409), summary="Submit many tasks (all or none)")
async def submit_batch(
    aq: AsyncCaller, requests: Annotated[list[TaskRequest], Body(max_length=10_000)],
    created_by: AsyncCreator,
) -> list[TaskInfo]:
    """Queue many tasks in one call: all are validated first, and one bad request rejects
    the batch (422, naming its index). Requests may name their `id` and depend on each
    other: a whole DAG in one call."""
    handles = await aq.submit_many(requests, created_by=created_by)
    return [await aq.info(h.id) for h in handles]


@router.get("/tasks", response_model=list[TaskInfo], summary="List tasks")
def list_tasks(
    bq: Caller,
    state: TaskState | None = None,
    tag: Annotated[str | None, Query(max_length=128)] = None,
    queue: Annotated[str | None, Query(max_length=200)] = None,
    handler: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="reached its state at or after")
                     ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    name: Annotated[str | None, Query(max_length=200)] = None,
    metadata: Annotated[str | None, Query(
        max_length=MAX_METADATA_FILTER,
        description='a JSON object; a task matches if every key has that value, '
                    'e.g. {"experiment": "e7"}')] = None,
) -> list[TaskInfo]:
    """Tasks, newest state change first, filtered by state, tag, queue, handler, since,
    name and metadata."""
    return bq.tasks(state, tag=tag, queue=queue, handler=handler, since=since, limit=limit,
                    name=name, metadata=None if metadata is None else _json_object(metadata))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ValidationError("metadata: give a JSON object")
    return value


@router.get("/failed", response_model=list[TaskInfo], summary="The failed-task registry")
def failed(bq: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[TaskInfo]:
    """Tasks that FAILED and were not retried, newest first, each with its error."""
    return bq.failed(limit)


# Declared before /tasks/{task_id}/...: a tag may be "cancel", and may contain "/".
@router.post("/tasks/cancel-tag/{tag:path}", response_model=CancelledTasks,
             summary="Cancel every unfinished task with a tag")
def cancel_tag(
    bq: Caller, tag: Annotated[str, Path(min_length=1, max_length=128)],
    terminate: Terminate = False,
) -> CancelledTasks:
    return CancelledTasks(tag=tag, cancelled=bq.cancel_tag(tag, terminate=terminate))


@router.get("/tasks/{task_id}", response_model=TaskInfo, responses=responses(404),
            summary="A task's record")
async def get_task(aq: AsyncCaller, task_id: TaskId) -> TaskInfo:
    return await aq.info(task_id)


@router.get(
    "/tasks/{task_id}/result", response_model=TaskResult,
    responses={202: {"model": TaskResult, "description": "not ended yet: its state"},
               **responses(404, 409, 410)},
    summary="A task's result",
)
async def task_result(aq: AsyncCaller, task_id: TaskId, response: Response
                      ) -> TaskResult | JSONResponse:
    """200 with `result` once the task SUCCEEDED; 202 with its state while it has not
    ended (poll again). A task that FAILED is 409 (`TaskFailedError`, with the handler's
    exception type and message; never its traceback); one CANCELLED or EXPIRED is 410
    (`TaskCancelledError`, `TaskExpiredError`): it has no result and never will."""
    info = await aq.info(task_id)
    if not info.state.terminal:
        response.status_code = 202
        return TaskResult(id=task_id, state=info.state)
    try:  # TaskFailedError, TaskCancelledError, TaskExpiredError: the app's handlers
        value = await aq.handle(task_id).get(timeout=0)
    except ResultTimeoutError:  # ended, but its stored result is past retention
        return JSONResponse({"error": "ResultExpiredError",
                             "detail": f"task {task_id} has no stored result any more"},
                            status_code=410)
    return TaskResult(id=task_id, state=TaskState.SUCCEEDED, result=value)


@router.post("/tasks/{task_id}/cancel", response_model=TaskInfo, responses=responses(404),
             summary="Cancel a task (and its subtasks and dependents)")
def cancel(bq: Caller, task_id: TaskId, terminate: Terminate = False) -> TaskInfo:
    """Persistent: a queued or delayed task never starts; a RUNNING one sees
    `ctx.cancelled` (or is killed with terminate=true) and stays RUNNING until it stops.
    Cancelling a task that has ended changes nothing. Returns the record after the call."""
    bq.cancel(task_id, terminate=terminate)
    return bq.info(task_id)


@router.delete("/tasks/{task_id}", status_code=204, response_class=Response,
               responses=responses(404, 409), summary="Delete an ended task")
def delete(bq: Caller, task_id: TaskId) -> Response:
    """Delete a task that has ended (SUCCEEDED, FAILED, CANCELLED or EXPIRED): its record,
    result, index entries, failed-registry entry, links and checkpoint (204). A task
    that has not ended is 409 (`ValidationError`: cancel it first); an unknown one 404."""
    try:
        bq.delete(task_id)
    except ValidationError as exc:  # not ended: a conflict with its state, not bad input
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)},
                            status_code=409)
    return Response(status_code=204)


@router.post("/tasks/{task_id}/retry", status_code=201, response_model=TaskInfo,
             responses=responses(404), summary="Run a FAILED task again, as a new task")
def retry(bq: Caller, task_id: TaskId) -> TaskInfo:
    """The new task's record (the failed one's `retried_as` names it). A task that did not
    fail, or was retried already, is 422."""
    return bq.info(bq.retry(task_id).id)


@router.patch("/tasks/{task_id}", response_model=TaskInfo, responses=responses(404),
              summary="Change a task that has not started")
def update(bq: Caller, task_id: TaskId, body: TaskUpdate) -> TaskInfo:
    """Its `priority` (its message moves to that priority's queue list), `metadata`
    (replaced), `name` or `description`; fields left out stay as they are. A task that
    has started or ended, a bad value or an empty body is 422, and nothing is written."""
    return bq.update(task_id, **body.model_dump())


@router.post("/tasks/{task_id}/pause", response_model=TaskInfo, responses=responses(404),
             summary="Pause a task that has not started")
def pause(bq: Caller, task_id: TaskId) -> TaskInfo:
    """PENDING or QUEUED -> PAUSED: no worker starts it until it is resumed (pausing a
    PAUSED task changes nothing). A task that has started or ended is 422."""
    bq.pause(task_id)
    return bq.info(task_id)


@router.post("/tasks/{task_id}/resume", response_model=TaskInfo, responses=responses(404),
             summary="Resume a paused task")
def resume(bq: Caller, task_id: TaskId) -> TaskInfo:
    """PAUSED -> QUEUED (or PENDING while it waits on dependencies or a countdown). A task
    that is not PAUSED is 422."""
    bq.resume(task_id)
    return bq.info(task_id)


@router.post("/tasks/{task_id}/dependencies", response_model=TaskInfo,
             responses=responses(404, 409), summary="Make a task wait for more tasks")
def add_dependency(bq: Caller, task_id: TaskId, body: DependencyBody) -> TaskInfo:
    """A task that has not started (PENDING, QUEUED, PAUSED) starts only once these have
    SUCCEEDED too. An unknown dependency, one that already failed or a cycle is 409
    (`DependencyError`); a task that has started is 422. Nothing is written then."""
    return bq.add_dependency(task_id, body.depends_on)
