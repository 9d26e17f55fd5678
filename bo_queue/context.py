"""TaskContext: what a handler gets besides its payload."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bo_queue.errors import TaskCancelledError, ValidationError

if TYPE_CHECKING:
    from bo_queue.client import BOQueue
    from bo_queue.core.handle import TaskHandle

_UNSET: Any = object()


class TaskLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """`ctx.log`: a logger whose lines are also kept with the task's record (the last
    MAX_LINES, each cut at MAX_CHARS), so `bq.info(id).log` shows what the run said."""

    MAX_LINES, MAX_CHARS = 200, 1000

    def __init__(self, logger: logging.Logger, extra: dict[str, Any]) -> None:
        super().__init__(logger, extra)
        self.lines: list[str] = []

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self.lines.append(f"{logging.getLevelName(level)} {text}"[: self.MAX_CHARS])
            del self.lines[: -self.MAX_LINES]
        super().log(level, msg, *args, **kwargs)


class TaskContext:
    """Progress, cooperative cancellation, checkpoints, subtasks and a logger for one run.

    A context lives for one attempt; what must outlive it (checkpoints, progress,
    cancellation) is in Redis, keyed by the task id, so a retry or a redelivery to
    another worker sees it.
    """

    def __init__(
        self, bq: BOQueue, task_id: str, handler: str, attempt: int, retries: int,
        study_id: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.handler = handler
        self.attempt = attempt  # 1 on the first run; counts retries and redeliveries
        self.retries = retries  # retries so far, as Celery counts them
        self.study_id = study_id  # set for a study's evaluations and steps
        context = {"task_id": task_id, "handler": handler, "attempt": attempt}
        if study_id is not None:
            context["study_id"] = study_id
        self.log = TaskLog(logging.getLogger(f"bo_queue.task.{handler}"), context)
        self.usage: dict[str, float] = {}  # what the run cost (wall, CPU, peak memory)
        self._bq = bq
        self._checkpoint: Any = _UNSET
        self._depends_on: tuple[str, ...] | None = None
        self.cancel_seen = False  # the runner ends the task CANCELLED once this is set

    @property
    def bq(self) -> BOQueue:
        """The worker's facade, to submit or look up other tasks."""
        return self._bq

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress as a fraction in [0, 1] with an optional message."""
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValidationError(f"progress fraction must be within [0, 1], got {fraction}")
        self._bq.records.set_progress(self.task_id, float(fraction), str(message))

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled; the handler should stop and return soon."""
        if not self.cancel_seen and self._bq.records.is_cancelled(self.task_id):
            self.cancel_seen = True
        return self.cancel_seen

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelledError(self.task_id, "cancelled while running")

    def report_intermediate(self, step: int, values: Mapping[str, Any]) -> bool:
        """For a study's evaluation: `bq.studies.report_intermediate` for its trial. True
        when the trial should stop now (the task is cancelled too: `ctx.cancelled`); what
        the handler returns after that does not change the trial."""
        raw = self._bq.records.get_fields(self.task_id, "metadata")[0]
        marked = json.loads(raw) if raw else None  # the study step names the trial there
        if self.study_id is None or not isinstance(marked, dict) or "trial_index" not in marked:
            raise ValidationError(f"task {self.task_id} is not the evaluation of a study's trial")
        return self._bq.studies.report_intermediate(
            self.study_id, marked["trial_index"], step, values
        )

    def checkpoint(self, state: Any) -> None:
        """Save JSON state that a later attempt of this task can resume from."""
        try:
            encoded = json.dumps(state, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"checkpoint is not JSON-serialisable: {exc}") from None
        key = self._bq.keys.checkpoint(self.task_id)
        self._bq.redis.set(key, encoded, ex=self._bq.settings.result_expires_s)
        self._checkpoint = state

    @property
    def last_checkpoint(self) -> Any:
        """The last state passed to checkpoint() by any attempt of this task, or None."""
        if self._checkpoint is _UNSET:
            raw = self._bq.redis.get(self._bq.keys.checkpoint(self.task_id))
            self._checkpoint = None if raw is None else json.loads(raw)
        return self._checkpoint

    def spawn(
        self, handler: str, payload: dict[str, Any] | None = None, **options: Any
    ) -> TaskHandle:
        """Submit a subtask; the parent/child link is recorded on both records. Raises
        TaskCancelledError once this task is cancelled (its subtasks are cancelled too)."""
        self.raise_if_cancelled()
        child = self._bq.submit(handler, payload, parent_id=self.task_id, **options)
        # A cancel that landed between the check and the submit read our children
        # before this one existed: cancel it here, so no subtask outlives the parent.
        if self._bq.records.is_cancelled(self.task_id):
            child.cancel()
            self.raise_if_cancelled()
        return child

    @property
    def depends_on(self) -> tuple[str, ...]:
        """The ids of the tasks this one waited on (submitted with depends_on)."""
        if self._depends_on is None:
            raw = self._bq.records.get_fields(self.task_id, "depends_on")[0]
            self._depends_on = tuple(json.loads(raw or "[]"))
        return self._depends_on

    def dependency_results(self) -> dict[str, Any]:
        """{id: result} of the dependencies that SUCCEEDED (with on_dependency_failure=
        "run", the others are left out; `bq.info(id)` says how they ended)."""
        ids = list(self.depends_on)
        metas = self._bq.results.fetch_many(ids)
        return {
            task_id: meta.get("result")
            for task_id, meta in zip(ids, metas, strict=True)
            if meta is not None and meta["status"] == "SUCCESS"
        }
