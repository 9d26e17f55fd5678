"""Optimization studies: models, storage, the manager (`bq.studies`) and, imported only on
workers that run study steps, the Ax engine."""

from bo_queue.errors import StudyTimeoutError
from bo_queue.studies.manager import StudyManager
from bo_queue.studies.models import (
    Choice,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    Study,
    StudySpec,
    StudyStatus,
    Trial,
    TrialStatus,
)
from bo_queue.studies.storage import FileStorage, RedisStorage, StorageBackend, StudyState

__all__ = [
    "Choice",
    "FileStorage",
    "LinearConstraint",
    "Objective",
    "OutcomeConstraint",
    "Range",
    "RedisStorage",
    "StorageBackend",
    "Strategy",
    "Study",
    "StudyManager",
    "StudySpec",
    "StudyState",
    "StudyStatus",
    "StudyTimeoutError",
    "Trial",
    "TrialStatus",
]
