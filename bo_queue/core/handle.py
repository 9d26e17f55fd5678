"""TaskHandle: the producer's view of one submitted task."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from bo_queue.core.records import TaskInfo
from bo_queue.core.results import OnFailure, OnSuccess, outcome
from bo_queue.errors import ResultTimeoutError, TaskCancelledError, TaskExpiredError
from bo_queue.states import TaskState

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core


RECORD_RECHECK_S = 5.0  # how often get() re-reads the record while it waits


class Progress(NamedTuple):
    fraction: float
    message: str


class TaskHandle:
    """A submitted task, by id: its state, progress and result (`get`), a callback when
    it ends (`then`), and `cancel`. Cheap to make; holds no connection of its own."""

    __slots__ = ("_bq", "id")

    def __init__(self, bq: Core, task_id: str) -> None:
        self._bq = bq
        self.id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def info(self) -> TaskInfo:
        return self._bq.info(self.id)

    @property
    def state(self) -> TaskState:
        return self.info().state

    @property
    def progress(self) -> Progress:
        with self._bq.broker_errors():
            fields = self._bq.records.get_fields(self.id, "progress", "progress_message")
        fraction, message = fields
        return Progress(float(fraction or 0.0), message or "")

    def ready(self) -> bool:
        """True once the task has ended, whichever way."""
        return self.state.terminal

    def get(self, timeout: float | None = None) -> Any:
        """The handler's return value. Raises how the task ended: TaskFailedError
        (TaskTimeoutError if it ran past its time limit), TaskCancelledError or
        TaskExpiredError; or ResultTimeoutError once `timeout` seconds pass without an
        ending (None: wait), which leaves the task alone."""
        with self._bq.broker_errors():
            return self._get(timeout)

    def _get(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        meta = self._bq.results.fetch(self.id)
        while meta is None:
            # A task that never ran has no stored result; its record says how it ended
            # (re-read now and then: whoever ended it may have died before waking us).
            state = self._bq.records.state(self.id)
            if state is TaskState.EXPIRED:
                raise TaskExpiredError(self.id, f"task {self.id} expired before it started")
            if state is TaskState.CANCELLED:
                reason = self._bq.records.get_fields(self.id, "error")[0]
                raise TaskCancelledError(self.id, reason or "cancelled before it started")
            left = RECORD_RECHECK_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeoutError(self.id, timeout or 0.0)
            meta = self._bq.results.wait(self.id, min(left, RECORD_RECHECK_S))
        return outcome(self.id, meta)

    def then(self, on_success: OnSuccess, on_failure: OnFailure | None = None) -> TaskHandle:
        """Run `on_success(result)` or `on_failure(TaskError)` in this process when the task
        ends (on a bo_queue thread). Returns self."""
        self._bq.callbacks.watch(self.id, on_success, on_failure)
        return self

    def cancel(self, terminate: bool = False) -> TaskState:
        return self._bq.cancel(self.id, terminate=terminate)
