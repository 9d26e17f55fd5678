"""Maintenance jobs celery beat runs (scheduler/app.py lists them and how often)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bo_queue.context import TaskContext
from bo_queue.registry import handler
from bo_queue.states import TaskState
from bo_queue.studies import FileStorage, StorageBackend, Study, StudyStatus, TrialStatus
from bo_queue.studies.manager import STEP


@handler("bo_queue.maintenance.release_delayed")
def release_delayed(payload: dict[str, Any], ctx: TaskContext) -> int:
    """Move held submissions that are due to their queues; returns how many."""
    return ctx.bq.delays.release_due(ctx.bq.send)


@handler("bo_queue.maintenance.sweep_studies")
def sweep_studies(payload: dict[str, Any], ctx: TaskContext) -> list[str]:
    """Ask for a step in every live study with a RUNNING trial past its lease (the step
    fails the trial and, in a closed loop, replaces it), and in every closed loop that is
    stalled. Returns those studies' ids."""
    now = datetime.now(UTC)
    swept = []
    for study in ctx.bq.studies.list():
        if study.status in (StudyStatus.ACTIVE, StudyStatus.PAUSED) and study.running_trials:
            running = ctx.bq.studies.trials(study.id, TrialStatus.RUNNING)
            due = any(t.leased_until is not None and t.leased_until < now for t in running)
        else:
            due = stalled(study, now)
        if due:
            ctx.bq.submit(STEP, {"study_id": study.id}, queue="bo")
            swept.append(study.id)
    return swept


def stalled(study: Study, now: datetime) -> bool:
    """A closed loop with no trial running and unchanged for a trial lease: only a step
    moves it on, and the one it had died with its worker (before saving a first trial,
    say, leaving it INITIALIZING). A step too many is harmless: steps take turns."""
    quiet = now - study.updated_at > timedelta(seconds=study.spec.strategy.trial_lease_s)
    live = study.status in (StudyStatus.INITIALIZING, StudyStatus.ACTIVE)
    return study.mode == "closed_loop" and live and not study.running_trials and quiet


@handler("bo_queue.maintenance.archive_studies")
def archive_studies(payload: dict[str, Any], ctx: TaskContext) -> list[str]:
    """Move COMPLETED and FAILED studies untouched for `archive_after_days` to the File
    backend under `archive_dir`, or to the database at `archive_url` (persist, then delete
    from Redis). Returns their ids."""
    settings = ctx.bq.settings
    url = payload.get("url") or settings.archive_url
    root = payload.get("root") or settings.archive_dir
    if not (url or root):
        return []
    days = float(payload.get("older_than_days", settings.archive_after_days))
    cutoff = datetime.now(UTC) - timedelta(days=days)
    if url:
        from bo_queue.studies.sql import SQLStorage  # SQLAlchemy only where it archives

        with SQLStorage(url) as database:
            return _archive(ctx, database, cutoff)
    return _archive(ctx, FileStorage(str(root)), cutoff)


def _archive(ctx: TaskContext, backend: StorageBackend, cutoff: datetime) -> list[str]:
    archived = []
    for study in ctx.bq.studies.list():
        if study.status.terminal and study.updated_at < cutoff:
            ctx.bq.studies.persist(study.id, backend)  # a failed save raises: kept in Redis
            ctx.bq.studies.delete(study.id)
            archived.append(study.id)
    return archived


@handler("bo_queue.maintenance.purge_indexes")
def purge_indexes(payload: dict[str, Any], ctx: TaskContext) -> int:
    """Records expire on their own (TTL); the sets that index them can outlive some of
    their members. Drop ids whose record is gone from tag and children sets, the state
    indexes and the failed registry, outbox messages of expired tasks, and held sends whose
    schedule entry is gone. Returns
    how many entries it removed."""
    bq, ns = ctx.bq, ctx.bq.keys.namespace
    removed = 0
    for pattern in (f"{ns}:tag:*", f"{ns}:task:*:children"):
        for key in bq.redis.scan_iter(match=pattern, count=500):
            if bq.redis.type(key) == "set":
                gone = _gone(ctx, sorted(str(m) for m in bq.redis.smembers(key)))
                removed += int(bq.redis.srem(key, *gone)) if gone else 0
    # The per-state indexes and the failed registry are sorted sets: check their members
    # too (a parked or long-delayed task can sit in one for longer than the retention).
    for key in [bq.keys.state_index(state) for state in TaskState] + [bq.keys.failed]:
        gone = _gone(ctx, [str(m) for m in bq.redis.zrange(key, 0, -1)])
        removed += int(bq.redis.zrem(key, *gone)) if gone else 0
    kept = bq.redis.hkeys(bq.keys.outbox)  # messages of tasks whose record expired queued
    gone = _gone(ctx, [str(i) for i in kept])
    removed += int(bq.redis.hdel(bq.keys.outbox, *gone)) if gone else 0
    specs = bq.redis.hkeys(bq.delays.specs)  # before the schedule: a hold writes both at once
    held = set(bq.redis.zrange(bq.keys.delayed, 0, -1))
    orphans = [i for i in specs if i not in held]
    if orphans:
        removed += int(bq.redis.hdel(bq.delays.specs, *orphans))
    return removed


def _gone(ctx: TaskContext, task_ids: list[str], page: int = 1000) -> list[str]:
    """The ids among `task_ids` whose record no longer exists."""
    gone: list[str] = []
    for start in range(0, len(task_ids), page):
        chunk = task_ids[start:start + page]
        with ctx.bq.redis.pipeline(transaction=False) as pipe:
            for task_id in chunk:
                pipe.exists(ctx.bq.keys.task(task_id))
            alive = pipe.execute()
        gone += [t for t, ok in zip(chunk, alive, strict=True) if not ok]
    return gone
