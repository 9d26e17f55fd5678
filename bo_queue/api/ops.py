"""Schedules, monitoring (queues, workers, metrics, the tasks now), the namespace's metadata
and the health check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from bo_queue.api.deps import api_key
from bo_queue.api.models import QueueState, ScheduleRequest
from bo_queue.api.routing import COMMON, Caller, responses
from bo_queue.monitor.health import HealthReport, check_health
from bo_queue.monitor.manager import Metrics, QueueStats, Summary, WorkerStatus
from bo_queue.schedules import ScheduleInfo

schedules = APIRouter(prefix="/schedules", tags=["schedules"],
                      responses={**COMMON, **responses(413)})
monitor = APIRouter(prefix="/monitor", tags=["monitor"], responses=COMMON)
namespace = APIRouter(tags=["monitor"], responses=COMMON)
health = APIRouter(tags=["health"])

Name = Annotated[str, Path(description="a schedule's name", max_length=200)]


@contextmanager
def _schedule_named(name: str) -> Iterator[None]:
    """bq.schedules says "no such schedule" with a KeyError: here, a 404."""
    try:
        yield
    except KeyError:
        raise HTTPException(404, f"no schedule named {name!r}") from None


@schedules.get("", response_model=list[ScheduleInfo], summary="List schedules")
def list_schedules(bq: Caller) -> list[ScheduleInfo]:
    return bq.schedules.list()


@schedules.post("", status_code=201, response_model=ScheduleInfo,
                summary="Add (or with replace, change) a schedule")
def add_schedule(bq: Caller, body: ScheduleRequest) -> ScheduleInfo:
    """Run `handler(payload)` every `every_s` seconds or on a `cron` expression in
    `timezone` (exactly one of the two), through `bo-queue beat`. An unknown handler, a
    bad cron expression or time zone, or a name that exists without `replace` is 422."""
    return bq.schedules.add(
        body.name, body.handler, body.payload, every=body.every_s, cron=body.cron,
        timezone=body.timezone, queue=body.queue, priority=body.priority, tags=body.tags,
        replace=body.replace,
    )


@schedules.get("/{name}", response_model=ScheduleInfo, responses=responses(404),
               summary="A schedule, with its next run")
def get_schedule(bq: Caller, name: Name) -> ScheduleInfo:
    with _schedule_named(name):
        return bq.schedules.get(name)


@schedules.delete("/{name}", status_code=204, response_class=Response,
                  responses=responses(404), summary="Remove a schedule")
def remove_schedule(bq: Caller, name: Name) -> Response:
    if not bq.schedules.remove(name):
        raise HTTPException(404, f"no schedule named {name!r}")
    return Response(status_code=204)


@schedules.post("/{name}/pause", response_model=ScheduleInfo, responses=responses(404),
                summary="Pause a schedule")
def pause_schedule(bq: Caller, name: Name) -> ScheduleInfo:
    with _schedule_named(name):
        return bq.schedules.pause(name)


@schedules.post("/{name}/resume", response_model=ScheduleInfo, responses=responses(404),
                summary="Resume a paused schedule")
def resume_schedule(bq: Caller, name: Name) -> ScheduleInfo:
    with _schedule_named(name):
        return bq.schedules.resume(name)


@monitor.get("/queues", response_model=list[QueueStats], summary="Queue lengths and ages")
def queues(bq: Caller) -> list[QueueStats]:
    """Every configured queue, per priority: its length and its oldest task's wait."""
    return bq.monitor.queues()


@monitor.get("/workers", response_model=list[WorkerStatus], summary="Live workers")
def workers(
    bq: Caller,
    inspect: Annotated[bool, Query(description="add Celery's inspect view")] = False,
    timeout: Annotated[float, Query(gt=0, le=10, description="for inspect")] = 1.0,
) -> list[WorkerStatus]:
    return bq.monitor.workers(inspect=inspect, timeout=timeout)


@monitor.get("/metrics", response_model=Metrics, summary="Task and study metrics")
def metrics(
    bq: Caller,
    window_s: Annotated[float, Query(ge=1, le=30 * 86400, description="seconds covered")
                        ] = 300.0,
) -> Metrics:
    """Per handler over the window: counts, throughput, mean/p95 duration, failure and
    retry rates; tasks running now; study metrics."""
    return bq.monitor.metrics(window_s=window_s)


QueueName = Annotated[str, Path(description="a configured queue", max_length=200)]


@namespace.post("/queues/{queue}/pause", response_model=QueueState, summary="Pause a queue")
def pause_queue(bq: Caller, queue: QueueName) -> QueueState:
    """No worker starts a task from the queue (or its capability and version queues)
    until it is resumed; its tasks stay QUEUED, and the health check does not count their
    wait as a failure. An unknown queue is 422."""
    bq.pause_queue(queue)
    return QueueState(queue=queue, paused=True)


@namespace.post("/queues/{queue}/resume", response_model=QueueState,
                summary="Resume a paused queue")
def resume_queue(bq: Caller, queue: QueueName) -> QueueState:
    """Workers start the queue's tasks again; the messages they held back are sent again
    (`resent`). An unknown queue is 422."""
    return QueueState(queue=queue, paused=False, resent=bq.resume_queue(queue))


@namespace.get("/summary", response_model=Summary, summary="The tasks now, by state and handler")
def summary(bq: Caller) -> Summary:
    """How many tasks are in each state now (every state, zeros included), and per handler
    (live records only). by_handler reads every indexed task's record: O(tasks)."""
    return bq.summary()


@namespace.get("/metadata", response_model=dict[str, Any], summary="The namespace's metadata")
def metadata(bq: Caller) -> dict[str, Any]:
    """Its keys and JSON values, with initialized_at and last_updated (ISO 8601, UTC)."""
    return bq.metadata()


@namespace.patch("/metadata", response_model=dict[str, Any], responses=responses(413),
                 summary="Merge keys into the namespace's metadata")
def update_metadata(
    bq: Caller,
    body: Annotated[dict[str, Any], Body(description="keys to set, with JSON values")],
) -> dict[str, Any]:
    """A shallow merge: the keys given replace their values, the others stay. A body that
    is not a JSON object, an empty or reserved key (initialized_at, last_updated), or
    metadata over 64 KiB once merged is 422, and nothing is written."""
    return bq.update_metadata(body)


@health.get(
    "/health", response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "not healthy"}},
    summary="Is the deployment healthy? (no key needed)",
)
def check(
    request: Request,
    require_beat: Annotated[bool, Query(description="check that celery beat runs")] = True,
    max_queue_age_s: Annotated[float, Query(gt=0, le=30 * 86400)] = 300.0,
) -> HealthReport | JSONResponse:
    """Redis answers, a live worker consumes each configured queue, beat runs (unless
    require_beat=false), and no queue's oldest task waited longer than max_queue_age_s.
    200 when every check passes, 503 with the same report when one fails. This checks the
    server's own namespace (BO_QUEUE_NAMESPACE). Without a valid API key the reply says
    only whether it is healthy; with one, each check and its detail."""
    namespaces = request.app.state.namespaces
    bq = namespaces.get(namespaces.settings.namespace)
    report = check_health(bq.monitor, max_queue_age_s=max_queue_age_s, require_beat=require_beat)
    if not _has_valid_key(request):  # anyone may ask; only key holders see the details
        report = HealthReport(ok=report.ok, checks=[])
    if not report.ok:
        return JSONResponse(report.model_dump(mode="json"), status_code=503)
    return report


def _has_valid_key(request: Request) -> bool:
    key = api_key(request)
    return key is not None and request.app.state.namespaces.keys.namespace_of(key) is not None
