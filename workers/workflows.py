"""Workflow handlers every worker runs: the advance that moves runs on, a starter for
schedules, and the study steps the pre-built workflows use (bo_queue.workflows.prebuilt)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from redis import exceptions as redis_errors

from bo_queue.context import TaskContext
from bo_queue.errors import BrokerUnavailableError
from bo_queue.registry import handler
from bo_queue.retry import RetryPolicy
from bo_queue.studies import FileStorage
from bo_queue.workflows import engine

# Another advance or a producer's pause/cancel holds the run's lock for milliseconds;
# waiting longer than its 30 s blocking timeout, or a Redis blip, is worth a retry.
BUSY = RetryPolicy(max_retries=20, backoff=0.5, backoff_max=10,
                   on=(redis_errors.LockError, redis_errors.ConnectionError,
                       redis_errors.TimeoutError, BrokerUnavailableError))


@handler(engine.ADVANCE, retry=BUSY)
def advance(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Move a workflow run on (see bo_queue.workflows.engine); its own id is its token."""
    return engine.advance(ctx.bq, payload["workflow_id"], ctx.task_id)


@handler("bo_queue.workflow.start")
def start(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Start a run of the definition in `workflow` (JSON) with `inputs`: what a schedule
    fires to run a workflow periodically. Returns the run's id."""
    return ctx.bq.workflows.run(payload["workflow"], payload.get("inputs")).id


# -- study steps for the pre-built workflows -------------------------------------------------

@handler("bo_queue.study.attach")
def attach(payload: dict[str, Any], ctx: TaskContext) -> list[dict[str, Any]]:
    """Add the given parameter sets to a study as trials: [{index, params}]."""
    trials = ctx.bq.studies.add_design_points(payload["study_id"], payload["points"])
    return [{"index": t.index, "params": t.params} for t in trials]


@handler("bo_queue.study.report_batch")
def report_batch(payload: dict[str, Any], ctx: TaskContext) -> int:
    """Report `results[i]` for `trials[i]`; returns how many were new."""
    study_id = payload["study_id"]
    pairs = zip(payload["trials"], payload["results"], strict=True)
    return ctx.bq.studies.add_results(study_id, [(t["index"], r) for t, r in pairs])


@handler("bo_queue.study.start")
def start_study(payload: dict[str, Any], ctx: TaskContext) -> dict[str, str]:
    """Run the study `study_id`, or a new one from the template `study` (a StudySpec)."""
    if "study_id" in payload:
        study_id = payload["study_id"]
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        spec = {**payload["study"], "name": f"{payload['study']['name']} {stamp}"}
        study_id = ctx.bq.studies.create_from_spec(spec).id
    ctx.bq.studies.run(study_id)
    return {"study_id": study_id}


@handler("bo_queue.study.status")
def study_status(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    study = ctx.bq.studies.get(payload["study_id"])
    return {"status": study.status.value, "ended": study.status.terminal,
            "completed_trials": study.completed_trials}


@handler("bo_queue.study.export")
def export_study(payload: dict[str, Any], ctx: TaskContext) -> dict[str, str]:
    """Write the study's export (spec, trials, results) as JSON into `dir`."""
    directory = Path(payload["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{payload['study_id']}.json"
    data = ctx.bq.studies.export(payload["study_id"])
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)  # readers never see half a file
    return {"path": str(path)}


@handler("bo_queue.study.archive")
def archive_study(payload: dict[str, Any], ctx: TaskContext) -> dict[str, str]:
    """Move the study to the File backend under `root` and delete it from Redis."""
    ctx.bq.studies.persist(payload["study_id"], FileStorage(payload["root"]))
    ctx.bq.studies.delete(payload["study_id"])
    return {"root": payload["root"], "study_id": payload["study_id"]}
