"""Optimization studies: models, storage, the manager (`bq.studies`) and, imported only on
workers that run study steps, the Ax engine."""

from typing import TYPE_CHECKING, Any

from bo_queue.errors import StudyTimeoutError
from bo_queue.studies.manager import StudyManager
from bo_queue.studies.models import (
    Choice,
    EarlyStopping,
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

if TYPE_CHECKING:
    from bo_queue.studies.sql import SQLStorage


def __getattr__(name: str) -> Any:
    """SQLStorage on first use: SQLAlchemy is not imported with bo_queue."""
    if name == "SQLStorage":
        from bo_queue.studies.sql import SQLStorage

        return SQLStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Choice",
    "EarlyStopping",
    "FileStorage",
    "LinearConstraint",
    "Objective",
    "OutcomeConstraint",
    "Range",
    "RedisStorage",
    "SQLStorage",
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
