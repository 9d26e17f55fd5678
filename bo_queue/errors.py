"""bo_queue's exceptions: one root, so callers can catch everything the library raises.

    BOQueueError
    ├── ConfigurationError          settings that cannot work (unknown key, bad URL, ...)
    ├── ValidationError             bad input at the edge (also a ValueError)
    │   ├── UnknownHandlerError     no worker or producer declared that handler name
    │   └── InvalidResultError      a handler's result, or a trial's reported values, that
    │                               cannot be stored (not JSON, wrong keys, NaN, ...)
    ├── UnknownTaskError            no record for that task id (also a LookupError)
    ├── BrokerUnavailableError      Redis cannot be reached within the connect timeout
    │   └── ReplicaAckError         fewer replicas than BO_QUEUE_REPLICA_ACKS confirmed a
    │                               write in time: it may not survive a failover
    ├── StorageError                a study database (SQLStorage) is down or refused a write
    ├── TaskLostError               (in a worker) the task's runs died with their worker
    │                               process more often than its budget allows: a poison task
    ├── ResultTimeoutError          TaskHandle.get(timeout=...) gave up waiting (also a
    │                               TimeoutError); the task goes on and may still finish
    ├── DependencyError             a dependency cycle, or an unknown or failed dependency
    ├── WorkflowError               a workflow that cannot go on (a step failed, ...)
    │   ├── MissingFieldError       a condition or reference reads a field no step produced
    │   ├── WorkflowNotFoundError   no workflow run with that id (also a LookupError)
    │   └── WorkflowTimeoutError    workflows.wait(timeout=...) gave up (also a TimeoutError)
    ├── StudyError                  about an optimization study
    │   ├── StudyNotFoundError      no study with that id (also a LookupError)
    │   ├── TrialNotFoundError      no trial with that index in the study (also a LookupError)
    │   ├── InvalidTransitionError  a lifecycle change the study's status does not allow
    │   ├── ReportConflictError     a second, different result for a trial that has one
    │   └── StudyTimeoutError       studies.wait(timeout=...) gave up (also a TimeoutError)
    ├── WebhookNotFoundError        no webhook with that id (also a LookupError)
    ├── AgentError                  pull mode: an agent lacks a type's capabilities, ...
    │   └── NotHeldError            complete/fail/release by an agent that does not hold
    │                               the task (another does, its lease ran out, it ended)
    └── TaskError                   how a task ended, raised by TaskHandle.get()
        ├── TaskFailedError         the handler raised; carries the remote type, message, traceback
        │   └── TaskTimeoutError    it ran past its time limit and was stopped (also a
        │                           TimeoutError): the submit's, its handler's or the default
        ├── TaskCancelledError      cancelled (by id, tag or terminate) before it could finish
        └── TaskExpiredError        its `expires` passed before a worker started it

    InvalidResultError raised *inside* a worker (a handler returned something that is not
    JSON) fails that task, with it as the remote type; so does TaskLostError (the worker
    running the task died more often than its retry budget allows: a poison task).
"""

from __future__ import annotations


def shown(value: object, limit: int = 80) -> str:
    """`value` for an error message: its repr, cut to `limit` characters, and never an
    error itself (str() refuses ints past 4,300 digits; a caller's __repr__ may raise)."""
    try:
        text = repr(value)
    except Exception:
        if isinstance(value, int):
            text = f"<an int of about {int(value.bit_length() * 0.30103) + 1} digits>"
        else:
            text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BOQueueError(Exception):
    """Root of every exception bo_queue raises."""


class ConfigurationError(BOQueueError):
    """The settings cannot work: an unknown key, a malformed URL, contradictory values."""


class ValidationError(BOQueueError, ValueError):
    """Bad input at the edge: the call is rejected and nothing was written."""


class UnknownHandlerError(ValidationError):
    """No worker has registered a handler of that name (and this process has not either)."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = f"; known handlers: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"unknown handler {name!r}{hint}")
        self.name = name


class InvalidResultError(ValidationError):
    """A handler returned a value that cannot be stored as JSON."""


class TaskLostError(BOQueueError):
    """Raised in a worker instead of starting a task whose earlier runs all died with their
    worker process (killed, crashed, out of memory) more often than its retry budget."""


class UnknownTaskError(BOQueueError, LookupError):
    """No task record exists for that id (never submitted, or past its retention)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r} (never submitted, or past retention)")
        self.task_id = task_id


class BrokerUnavailableError(BOQueueError, ConnectionError):
    """Redis could not be reached in time; nothing was submitted."""


class ReplicaAckError(BrokerUnavailableError):
    """Fewer replicas than `replica_acks` (BO_QUEUE_REPLICA_ACKS) confirmed a write within
    `replica_ack_timeout_s`. The write was made on the primary, but a failover now may
    lose it: a submit that raises this returned no handle (its task is on the primary,
    and may run; submitting it again under the same `id` says whether it is there)."""

    def __init__(self, acked: int | None, required: int, timeout_s: float,
                 detail: str = "") -> None:
        said = "an unknown number" if acked is None else str(acked)
        super().__init__(
            f"only {said} of the {required} required replica(s) acknowledged the write "
            f"within {timeout_s:g} s{detail}: it is on the primary but may not survive a "
            "failover"
        )
        self.acked = acked
        self.required = required
        self.timeout_s = timeout_s


class StorageError(BOQueueError):
    """A study database (SQLStorage) cannot be reached, or refused a write: nothing of the
    write is kept (it ran in one transaction)."""


class DependencyError(BOQueueError):
    """A dependency cycle, a dependency on an unknown task, or a failed dependency."""


class WorkflowError(BOQueueError):
    """A workflow run that cannot go on, or a request its status does not allow."""


class MissingFieldError(WorkflowError):
    """A condition or reference read a field the workflow context does not have (yet)."""


class WorkflowNotFoundError(WorkflowError, LookupError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow run with id {workflow_id!r}")
        self.workflow_id = workflow_id


class WorkflowTimeoutError(WorkflowError, TimeoutError):
    """`workflows.wait(timeout=...)` gave up; the workflow itself goes on."""


class StudyError(BOQueueError):
    """Something about an optimization study."""


class StudyNotFoundError(StudyError, LookupError):
    def __init__(self, study_id: str) -> None:
        super().__init__(f"no study with id {study_id!r}")
        self.study_id = study_id


class TrialNotFoundError(StudyError, LookupError):
    def __init__(self, study_id: str, index: int) -> None:
        super().__init__(f"study {study_id!r} has no trial {index}")
        self.study_id = study_id
        self.index = index


class InvalidTransitionError(StudyError):
    """A lifecycle change the study's current status does not allow."""


class ReportConflictError(StudyError):
    """A trial already has a different result; results are written once."""


class StudyTimeoutError(StudyError, TimeoutError):
    """`studies.wait(timeout=...)` gave up before the study ended; the study goes on."""


class WebhookNotFoundError(BOQueueError, LookupError):
    """No webhook with that id in the namespace (bq.monitor.webhooks)."""

    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"no webhook with id {webhook_id!r}")
        self.webhook_id = webhook_id


class AgentError(BOQueueError):
    """Pull mode (bo_queue.agents): a request an external agent may not make, e.g. a
    claim of a type whose required capabilities it has not declared."""


class NotHeldError(AgentError):
    """complete/fail/release of a task the agent does not hold: another agent holds it,
    the agent's lease ran out (the task went back to the queue), or the task ended."""

    def __init__(self, task_id: str, agent_id: str, detail: str) -> None:
        super().__init__(f"agent {agent_id!r} does not hold task {task_id!r}: {detail}")
        self.task_id = task_id
        self.agent_id = agent_id


class TaskError(BOQueueError):
    """How a task ended, when it did not succeed. `task_id` names the task."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskFailedError(TaskError):
    """The handler raised. The remote exception's type, message and traceback come along."""

    def __init__(
        self, task_id: str, remote_type: str, remote_message: str, remote_traceback: str | None
    ) -> None:
        super().__init__(task_id, f"task {task_id} failed: {remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class TaskCancelledError(TaskError):
    """The task was cancelled before it could finish. Handlers may raise it to stop early."""

    def __init__(self, task_id: str = "", reason: str = "cancelled") -> None:
        super().__init__(task_id, f"task {task_id} was cancelled: {reason}")
        self.reason = reason


class TaskExpiredError(TaskError):
    """The task's `expires` passed before any worker started it; it never ran."""


class TaskTimeoutError(TaskFailedError, TimeoutError):
    """The task ran past its time limit (the submit's `time_limit`, else its handler's, else
    `default_time_limit_s`) and was stopped: a failure, so `except TaskFailedError` catches
    it too. `remote_type` says what stopped it: `bo_queue.errors.TaskTimeoutError` (the
    soft limit, raised in the handler), or Celery's `TimeLimitExceeded` (the hard limit,
    which kills a handler that caught the soft one). Raised in a worker, it fails the run
    (and retries it if the task's retry policy says so)."""

    def __init__(self, task_id: str, message: str,
                 remote_type: str = "bo_queue.errors.TaskTimeoutError",
                 remote_traceback: str | None = None) -> None:
        TaskError.__init__(self, task_id, message)  # not TaskFailedError's "failed: ..."
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type[TaskTimeoutError], tuple[str, str, str, str | None]]:
        # Celery pickles what a run raised (from a pool process, and to check it can):
        # rebuilt from its fields, it stays itself instead of the nearest base that
        # takes one argument
        return type(self), (self.task_id, self.remote_message, self.remote_type,
                            self.remote_traceback)


class ResultTimeoutError(BOQueueError, TimeoutError):
    """`TaskHandle.get(timeout=...)` gave up waiting for the result. Nothing happened to
    the task: it goes on, and a later `get()` may return its result."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"task {task_id} did not finish within {timeout} s (it goes on)")
        self.task_id = task_id
        self.timeout = timeout
