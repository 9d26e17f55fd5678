"""Workflows: steps that are handler calls, run in order, side by side, on a condition,
in a loop, or after a wait; their state lives in Redis (see bo_queue.workflows.engine)."""

from bo_queue.workflows.conditions import Condition, condition, ref
from bo_queue.workflows.models import (
    Loop,
    Parallel,
    Step,
    StepRun,
    Wait,
    When,
    Workflow,
    WorkflowRun,
    WorkflowSpec,
    WorkflowStatus,
)

__all__ = [
    "Condition",
    "Loop",
    "Parallel",
    "Step",
    "StepRun",
    "Wait",
    "When",
    "Workflow",
    "WorkflowRun",
    "WorkflowSpec",
    "WorkflowStatus",
    "condition",
    "ref",
]
