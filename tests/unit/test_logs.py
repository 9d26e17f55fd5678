"""JsonFormatter on plain logging records: one JSON object per line, task fields when known."""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from celery import signals
from celery._state import _task_stack

from bo_queue import BOQueue, TaskContext
from bo_queue.monitor import logs
from bo_queue.monitor.logs import JsonFormatter, install_json_logging, use_json


def _record(msg: str = "hello %s", args: tuple[Any, ...] = ("world",), name: str = "app.x",
            level: int = logging.INFO, exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 10, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def _format(record: logging.LogRecord, worker: str | None = None) -> dict[str, Any]:
    line = JsonFormatter(worker=worker).format(record)
    assert "\n" not in line  # one object per line, whatever the message holds
    entry: dict[str, Any] = json.loads(line)
    return entry


def test_plain_record() -> None:
    record = _record()
    entry = _format(record)
    assert list(entry) == ["time", "level", "logger", "message"]
    assert entry["level"] == "INFO" and entry["logger"] == "app.x"
    assert entry["message"] == "hello world"
    assert entry["time"].endswith("Z")
    when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(when.timestamp() - record.created) < 0.001


def test_task_fields_from_the_record() -> None:
    study = uuid.uuid4()  # not JSON: written as its str
    entry = _format(_record(task_id="t-1", handler="reports.build", attempt=2, study_id=study),
                    worker="w1@host")
    assert entry["task_id"] == "t-1"
    assert entry["handler"] == "reports.build"
    assert entry["attempt"] == 2
    assert entry["study_id"] == str(study)
    assert entry["worker"] == "w1@host"
    assert list(entry)[4:] == ["task_id", "handler", "attempt", "study_id", "worker"]


def test_celery_task_formatter_fields() -> None:
    # TaskFormatter's task_name becomes handler; its "???" (outside a task) is dropped
    entry = _format(_record(name="celery.task", task_id="t-2", task_name="t.echo"))
    assert (entry["task_id"], entry["handler"]) == ("t-2", "t.echo")
    entry = _format(_record(name="celery.task", task_id="???", task_name="???"))
    assert "task_id" not in entry and "handler" not in entry


def test_celery_trace_lines_name_their_task() -> None:
    data = {"id": "t-3", "name": "t.echo", "runtime": 0.01, "return_value": "{}"}
    entry = _format(_record("Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
                            (data,), name="celery.app.trace", data=data), worker="w@h")
    assert entry["message"] == "Task t.echo[t-3] succeeded in 0.01s: {}"
    assert (entry["task_id"], entry["handler"], entry["worker"]) == ("t-3", "t.echo", "w@h")
    # another library's `data` means nothing to us
    entry = _format(_record(name="other.lib", data={"id": "x", "name": "y"}))
    assert "task_id" not in entry


def test_the_running_task_fills_in_what_the_record_lacks() -> None:
    task = SimpleNamespace(name="t.echo", request=SimpleNamespace(id="t-4", hostname="w2@h"))
    _task_stack.push(task)
    try:
        entry = _format(_record(name="some.library"))
        assert (entry["task_id"], entry["handler"], entry["worker"]) == ("t-4", "t.echo", "w2@h")
        own = _format(_record(task_id="t-5", handler="h.own"))  # the record's own win
        assert (own["task_id"], own["handler"]) == ("t-5", "h.own")
    finally:
        _task_stack.pop()
    assert "task_id" not in _format(_record())


def test_exceptions_become_error_and_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        entry = _format(_record("failed", (), level=logging.ERROR, exc_info=sys.exc_info()))
    assert entry["level"] == "ERROR"
    assert entry["error"] == "ValueError: bad\nvalue"
    assert entry["traceback"].startswith("Traceback (most recent call last)")
    assert "test_exceptions_become_error_and_traceback" in entry["traceback"]
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        entry = _format(_record("stopped", (), exc_info=sys.exc_info()))
    assert entry["error"] == "KeyboardInterrupt"
    assert "error" not in _format(_record(exc_info=None))


def test_stack_info_and_unicode() -> None:
    entry = _format(_record("grüße %s", ("→",), stack_info="Stack (most recent call last):\n x"))
    assert entry["message"] == "grüße →"
    assert entry["stack"].startswith("Stack")


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger = logging.getLogger(f"bo_queue.test.{uuid.uuid4().hex}")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_ctx_log_lines_carry_the_task(bq: BOQueue) -> None:
    ctx = TaskContext(bq, "t-6", "reports.build", attempt=3, retries=2)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(worker="w3@h"))
    ctx.log.logger.addHandler(handler)
    ctx.log.logger.setLevel(logging.INFO)
    try:
        ctx.log.info("part %d of %d", 3, 10)
        ctx.log.info("study step", extra={"study_id": "s-1"})
    finally:
        ctx.log.logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "part 3 of 10"
    assert first["logger"] == "bo_queue.task.reports.build"
    assert (first["task_id"], first["handler"], first["attempt"]) == ("t-6", "reports.build", 3)
    assert first["worker"] == "w3@h" and "study_id" not in first
    # the adapter's extra replaces the call's before Python 3.13 (merge_extra), never the task
    assert (second["task_id"], second["attempt"]) == ("t-6", 3)


def test_use_json_replaces_every_formatter(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    use_json(logger=logger)
    logger.info("hi %s", "there", extra={"task_id": "t-7"})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "hi there" and entry["task_id"] == "t-7"


def test_install_hooks_celery_logging_signals(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    install_json_logging()
    install_json_logging()  # idempotent: one receiver per signal
    try:
        signals.celeryd_init.send(sender="w9@h", instance=None, conf=None, options={})
        signals.after_setup_task_logger.send(sender=None, logger=logger, loglevel=logging.INFO,
                                             logfile=None, format="", colorize=False)
        logger.warning("careful")
        entry = json.loads(stream.getvalue())
        assert entry == {**entry, "level": "WARNING", "message": "careful", "worker": "w9@h"}
    finally:
        for signal, uid in ((signals.celeryd_init, "bo_queue.monitor.logs.hostname"),
                            (signals.after_setup_logger, "bo_queue.monitor.logs.root"),
                            (signals.after_setup_task_logger, "bo_queue.monitor.logs.task")):
            signal.disconnect(dispatch_uid=uid)
        logs._Installed.hostname = None
