"""bo_queue: a distributed task queue for optimization work, on Celery and Redis.

Importing this package is light: it never imports torch, Ax or SQLAlchemy (SQLStorage is
imported when first named).
"""

from typing import TYPE_CHECKING, Any

from bo_queue.aio import AsyncBOQueue, AsyncTaskHandle
from bo_queue.client import BOQueue
from bo_queue.config import Settings
from bo_queue.context import TaskContext
from bo_queue.core.handle import Progress, TaskHandle
from bo_queue.core.records import TaskInfo, TaskRun
from bo_queue.core.requests import TaskRequest
from bo_queue.errors import (
    AgentError,
    BOQueueError,
    BrokerUnavailableError,
    ConfigurationError,
    DependencyError,
    InvalidResultError,
    InvalidTransitionError,
    MissingFieldError,
    NotHeldError,
    ReplicaAckError,
    ReportConflictError,
    ResultTimeoutError,
    StorageError,
    StudyError,
    StudyNotFoundError,
    StudyTimeoutError,
    TaskCancelledError,
    TaskError,
    TaskExpiredError,
    TaskFailedError,
    TaskLostError,
    TaskTimeoutError,
    TrialNotFoundError,
    UnknownHandlerError,
    UnknownTaskError,
    ValidationError,
    WebhookNotFoundError,
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from bo_queue.handlers import Handler, register
from bo_queue.registry import handler
from bo_queue.retry import RetryPolicy
from bo_queue.states import TERMINAL_STATES, Priority, TaskState
from bo_queue.studies import (
    Choice,
    EarlyStopping,
    FileStorage,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    Study,
    StudyStatus,
    Trial,
    TrialStatus,
)
from bo_queue.workflows import Step, Workflow, WorkflowRun, WorkflowStatus, condition, ref

if TYPE_CHECKING:
    from bo_queue.studies.sql import SQLStorage


def __getattr__(name: str) -> Any:
    if name == "SQLStorage":
        from bo_queue.studies.sql import SQLStorage

        return SQLStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

# Grouped by concept; tests/unit/test_public_api.py pins the set.
__all__ = [
    # the facade, its settings and handlers
    "BOQueue",
    "AsyncBOQueue",
    "AsyncTaskHandle",
    "Settings",
    "handler",
    "Handler",
    "register",
    "TaskContext",
    "RetryPolicy",
    # tasks
    "TaskRequest",
    "TaskHandle",
    "TaskInfo",
    "TaskRun",
    "Progress",
    "TaskState",
    "TERMINAL_STATES",
    "Priority",
    # studies
    "Study",
    "Objective",
    "OutcomeConstraint",
    "Range",
    "Choice",
    "LinearConstraint",
    "Strategy",
    "EarlyStopping",
    "StudyStatus",
    "Trial",
    "TrialStatus",
    "FileStorage",
    "SQLStorage",
    # workflows
    "Workflow",
    "Step",
    "WorkflowRun",
    "WorkflowStatus",
    "condition",
    "ref",
    # errors (the tree is drawn in bo_queue.errors)
    "BOQueueError",
    "ConfigurationError",
    "ValidationError",
    "UnknownHandlerError",
    "InvalidResultError",
    "UnknownTaskError",
    "BrokerUnavailableError",
    "ReplicaAckError",
    "TaskLostError",
    "DependencyError",
    "WorkflowError",
    "MissingFieldError",
    "WorkflowNotFoundError",
    "WorkflowTimeoutError",
    "StudyError",
    "StudyNotFoundError",
    "TrialNotFoundError",
    "InvalidTransitionError",
    "ReportConflictError",
    "StudyTimeoutError",
    "WebhookNotFoundError",
    "StorageError",
    "AgentError",
    "NotHeldError",
    "TaskError",
    "TaskFailedError",
    "TaskCancelledError",
    "TaskExpiredError",
    "TaskTimeoutError",
    "ResultTimeoutError",
    "__version__",
]
