"""Structured logs: one JSON object per line, for log shippers (BO_QUEUE_LOG_JSON=true).

    {"time": "2026-11-21T03:00:00.123Z", "level": "INFO", "logger": "bo_queue.task.reports.build",
     "message": "part 3 done", "task_id": "...", "handler": "reports.build", "attempt": 1,
     "worker": "w1@host"}

Task fields come from the record when it has them (`ctx.log` adds task_id, handler and
attempt; any logger's `extra={"study_id": ...}` adds study_id); else from Celery's own task log
lines (celery.app.trace's "Task ... succeeded" carries the task's id and name); else from
the task running in this process, as Celery's TaskFormatter does for the celery.task
logger. A Celery task's name is its bo_queue handler's name, so it becomes "handler".

Workers and beat switch to it through Celery's logging signals (`install_json_logging`),
which `workers.app` and `scheduler.app` call when `Settings.log_json` is set.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import signals
from celery._state import get_current_task
from celery.utils.log import get_multiprocessing_logger

from bo_queue.validation import utc

# What Celery's TaskFormatter puts on a record logged outside a task.
_UNKNOWN = "???"
# Optional fields, in the order they are written: (key in the JSON, record attributes).
_FIELDS = (
    ("task_id", ("task_id",)),
    ("handler", ("handler", "task_name")),
    ("attempt", ("attempt",)),
    ("study_id", ("study_id",)),
    ("worker", ("worker", "hostname")),
)


def _attr(record: logging.LogRecord, *names: str) -> Any:
    for name in names:
        value = getattr(record, name, None)
        if value is not None and value != _UNKNOWN and value != "":
            return value
    return None


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON: time (ISO 8601, UTC), level, logger, message;
    task_id, handler, attempt, study_id and worker when known; error and traceback when
    the record carries an exception."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker  # this process's worker hostname, for records that lack one

    def task_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields = {key: _attr(record, *names) for key, names in _FIELDS}
        data = getattr(record, "data", None)
        if record.name.startswith("celery") and isinstance(data, dict):
            # celery.app.trace: "Task %(name)s[%(id)s] succeeded ..." with extra={"data": ...}
            fields["task_id"] = fields["task_id"] or data.get("id")
            fields["handler"] = fields["handler"] or data.get("name")
        if fields["task_id"] is None:
            task: Any = get_current_task()
            request = getattr(task, "request", None) if task is not None else None
            if request is not None and getattr(request, "id", None):
                fields["task_id"] = request.id
                fields["handler"] = fields["handler"] or task.name
                fields["worker"] = fields["worker"] or getattr(request, "hostname", None)
        fields["worker"] = fields["worker"] or self.worker
        return {key: value for key, value in fields.items() if value is not None}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc(record.created)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(self.task_fields(record))
        exc_info = record.exc_info
        if isinstance(exc_info, tuple) and exc_info[1] is not None:
            error = exc_info[1]
            text = str(error)
            entry["error"] = f"{type(error).__name__}: {text}" if text else type(error).__name__
            entry["traceback"] = self.formatException(exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Installed:
    hostname: str | None = None  # the worker's, from celeryd_init (before logging is set up)


def _remember_hostname(sender: Any = None, **_: Any) -> None:
    _Installed.hostname = str(sender) if sender else None


def use_json(logger: logging.Logger | None = None, **_: Any) -> None:
    """Give every handler of `logger` a JsonFormatter (an after_setup_*logger receiver)."""
    loggers: list[logging.Logger | None] = [logger or logging.getLogger()]
    if loggers[0] is logging.getLogger():  # Celery gives the multiprocessing logger one too
        loggers.append(get_multiprocessing_logger())
    for each in filter(None, loggers):
        for handler in each.handlers:
            handler.setFormatter(JsonFormatter(worker=_Installed.hostname))


def install_json_logging() -> None:
    """Make the Celery program this process becomes (worker or beat) log JSON lines: the
    root logger's handlers (bo_queue, ctx.log, Celery's own lines) and the task logger's."""
    signals.celeryd_init.connect(
        _remember_hostname, weak=False, dispatch_uid="bo_queue.monitor.logs.hostname"
    )
    signals.after_setup_logger.connect(
        use_json, weak=False, dispatch_uid="bo_queue.monitor.logs.root"
    )
    signals.after_setup_task_logger.connect(
        use_json, weak=False, dispatch_uid="bo_queue.monitor.logs.task"
    )
