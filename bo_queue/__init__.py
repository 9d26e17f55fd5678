"""bo_queue: a distributed task queue for optimization work, on Celery and Redis.

Importing this package is light: it never imports torch or Ax.
"""

from bo_queue.client import BOQueue, TaskRequest
from bo_queue.config import Settings
from bo_queue.context import TaskContext
from bo_queue.core.handle import Progress, TaskHandle
from bo_queue.core.records import TaskInfo
from bo_queue.errors import (
    AgentError,
    BOQueueError,
    BrokerUnavailableError,
    ConfigurationError,
    DependencyError,
    InvalidResultError,
    InvalidTransitionError,
    NotHeldError,
    ReportConflictError,
    StudyError,
    StudyNotFoundError,
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
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from bo_queue.registry import handler
from bo_queue.retry import RetryPolicy
from bo_queue.states import TERMINAL_STATES, Priority, TaskState
from bo_queue.studies import (
    Choice,
    FileStorage,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    Study,
    StudyStatus,
    StudyTimeoutError,
    Trial,
    TrialStatus,
)
from bo_queue.workflows import Step, Workflow, WorkflowRun, WorkflowStatus, condition, ref

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATES",
    "AgentError",
    "BOQueue",
    "BOQueueError",
    "BrokerUnavailableError",
    "Choice",
    "ConfigurationError",
    "DependencyError",
    "FileStorage",
    "InvalidResultError",
    "InvalidTransitionError",
    "LinearConstraint",
    "NotHeldError",
    "Objective",
    "OutcomeConstraint",
    "Priority",
    "Progress",
    "Range",
    "ReportConflictError",
    "RetryPolicy",
    "Settings",
    "Step",
    "Strategy",
    "Study",
    "StudyError",
    "StudyNotFoundError",
    "StudyStatus",
    "StudyTimeoutError",
    "TaskCancelledError",
    "TaskContext",
    "TaskError",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskHandle",
    "TaskInfo",
    "TaskLostError",
    "TaskRequest",
    "TaskState",
    "TaskTimeoutError",
    "Trial",
    "TrialNotFoundError",
    "TrialStatus",
    "UnknownHandlerError",
    "UnknownTaskError",
    "ValidationError",
    "Workflow",
    "WorkflowError",
    "WorkflowNotFoundError",
    "WorkflowRun",
    "WorkflowStatus",
    "WorkflowTimeoutError",
    "__version__",
    "condition",
    "handler",
    "ref",
]
