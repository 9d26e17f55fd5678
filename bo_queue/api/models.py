"""The few request and response bodies the facade has no type for.

Everything else the API takes and returns is the facade's own model (TaskRequest,
TaskInfo, StudySpec, Study, Trial, Strategy, WorkflowSpec, WorkflowRun, TaskTree,
ScheduleInfo, QueueStats, WorkerStatus, Metrics, HealthReport): one set of types,
validated the same way in Python and over HTTP.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bo_queue.states import Priority, PriorityInput, TaskState
from bo_queue.studies.models import (
    LinearConstraint,
    Objective,
    Outcome,
    OutcomeConstraint,
    Parameter,
    Strategy,
    StudySpec,
    Value,
)
from bo_queue.workflows.models import WorkflowSpec

# Longest interval a schedule may have (ten years): keeps timedelta arithmetic in range.
MAX_EVERY_S = 10 * 366 * 86400.0


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: the error's type and a message (never a traceback)."""

    error: str = Field(examples=["StudyNotFoundError"])
    detail: str = Field(examples=["no study with id 'abc'"])


class TaskResult(BaseModel):
    """GET /tasks/{id}/result: the handler's return value once the task SUCCEEDED (200);
    while it has not ended, its state and `result: null` (202)."""

    id: str
    state: TaskState
    result: Any = None


class CancelledTasks(BaseModel):
    """POST /tasks/cancel-tag/{tag}: the unfinished tasks the call cancelled."""

    tag: str
    cancelled: list[str]


class DependencyBody(BaseModel):
    """POST /tasks/{id}/dependencies: the tasks it must wait for as well."""

    model_config = ConfigDict(extra="forbid")

    depends_on: list[str] = Field(min_length=1, max_length=1000,
                                  examples=[["3f2a9c0e-prepare"]])


class QueueState(BaseModel):
    """POST /queues/{queue}/pause and /resume: whether it is paused now, and (resume) how
    many held-back messages were sent again."""

    queue: str
    paused: bool
    resent: int = 0


class ReportBody(BaseModel):
    """A trial's result: every objective and outcome-constrained metric, each a number or
    [mean, sem]."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, Outcome] = Field(examples=[{"loss": 0.31}])
    metadata: dict[str, Any] | None = Field(default=None, examples=[{"host": "gpu-3"}])


class ReportFailureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class ReportOutcome(BaseModel):
    """`recorded` is False when the same result (or failure) was already recorded:
    reports are idempotent."""

    study_id: str
    index: int
    recorded: bool


class GraphNode(BaseModel):
    id: str
    handler: str
    state: TaskState


class TaskGraph(BaseModel):
    """GET /graph: the tasks around those asked for, their `depends_on` edges
    ([dependency, dependent]: the dependency runs first), topological layers, and the
    same as Graphviz DOT text."""

    nodes: list[GraphNode]
    edges: list[tuple[str, str]]
    layers: list[list[str]]
    dot: str


class WorkflowRunRequest(BaseModel):
    """POST /workflows: a definition (the JSON form of a WorkflowSpec, as `Workflow(...)
    .spec()` dumps it), the inputs its `input.<key>` fields read, and an optional run id."""

    model_config = ConfigDict(extra="forbid")

    definition: WorkflowSpec
    inputs: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._@-]{1,100}$")


class DesignPointsBody(BaseModel):
    """Trials at points the caller chooses: each a value for every parameter."""

    model_config = ConfigDict(extra="forbid")

    points: list[dict[str, Value]] = Field(min_length=1, max_length=1000,
                                           examples=[[{"x": 0.5, "y": 0.1}]])


class ResultEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, le=10**9)
    values: dict[str, Outcome] = Field(examples=[{"loss": 0.31}])
    metadata: dict[str, Any] | None = None


class ResultsBody(BaseModel):
    """Results of many trials at once (add_results): all checked before any is told."""

    model_config = ConfigDict(extra="forbid")

    results: list[ResultEntry] = Field(min_length=1, max_length=1000)


class ResultsOutcome(BaseModel):
    """How many of the results were new (a repeat of a recorded result is not)."""

    study_id: str
    recorded: int


class ParameterSpaceBody(BaseModel):
    """A study's new search space, while it is CREATED."""

    model_config = ConfigDict(extra="forbid")

    parameters: list[Parameter] = Field(min_length=1)
    parameter_constraints: list[LinearConstraint] = Field(default_factory=list)


class FailBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


class ScheduleRequest(BaseModel):
    """A schedule of a handler (bq.schedules.add): exactly one of `every_s` and `cron`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    handler: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    every_s: float | None = Field(default=None, gt=0, le=MAX_EVERY_S)
    cron: str | None = Field(default=None, max_length=200, examples=["0 3 * * *"])
    timezone: str = Field(default="UTC", max_length=100)
    queue: str | None = None
    priority: PriorityInput = Priority.NORMAL
    tags: tuple[str, ...] = ()
    replace: bool = False

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Priority:
        return Priority.parse(value)  # a name in any case, or a level, as in TaskRequest


class StudyCreate(StudySpec):
    """POST /studies: a StudySpec, plus the study's description and JSON metadata (kept
    with the study and returned by GET; checked as bq.studies.create checks them)."""

    description: str = ""
    metadata: dict[str, Any] | None = None
    warm_start_from: list[str] = Field(default_factory=list, max_length=100)

    def spec(self) -> StudySpec:
        return StudySpec.model_validate(
            self.model_dump(exclude={"description", "metadata", "warm_start_from"})
        )


class CloneBody(BaseModel):
    """POST /studies/{id}/clone: what differs from the source (the rest is its spec,
    description and metadata). Everything is optional."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    parameters: list[Parameter] | None = None
    objectives: list[Objective] | None = None
    parameter_constraints: list[LinearConstraint] | None = None
    outcome_constraints: list[OutcomeConstraint] | None = None
    strategy: Strategy | None = None
    evaluator: str | None = Field(default=None, min_length=1, max_length=200)
    evaluator_options: dict[str, Any] | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set if k != "name"}
