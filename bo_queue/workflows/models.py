"""Workflow definitions: the builder, the step models it produces, and what they compile to.

    wf = (Workflow("etl")
          .step("extract", "etl.extract", {"source": ref("input.source")})
          .parallel("transform", [Step("clean", "etl.clean"), Step("stats", "etl.stats")])
          .when("stats.rows > 0", then=Step("load", "etl.load"), otherwise=Step("log", "etl.log"))
          .loop("poll", Step("check", "etl.check"), until="check.done == true", max_iterations=10)
          .wait(seconds=5)
          .wait(until="vars.approved == true"))

A definition is checked when it is built (unique names, a loop's limit, conditions and
references that can only read what an earlier step produces) and compiled into a flat
list of instructions with jumps, so a run's position is one number that survives any
restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bo_queue.errors import ValidationError
from bo_queue.states import Priority
from bo_queue.workflows.conditions import Checked, Condition, condition, refs_in

NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
RESERVED = frozenset({"input", "vars"})
MAX_ITERATIONS = 10_000
_AUTO = itertools.count(1)
_UNSET: Any = object()  # a Step argument not given (pydantic then says it is required)


class _Node(Checked):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME)


class Step(_Node):
    """One handler call; its result is stored in the context under its name."""

    kind: Literal["step"] = "step"
    handler: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None
    priority: Priority = Priority.NORMAL

    def __init__(self, name: str = _UNSET, handler: str = _UNSET,
                 payload: Mapping[str, Any] | None = None, **options: Any) -> None:
        # pydantic calls this to validate a Step in a JSON definition too: a field it
        # lacks, or a payload that is not an object, is a validation error, not a TypeError
        fields = {"name": name, "handler": handler, "payload": {} if payload is None else payload,
                  **options}
        super().__init__(**{k: v for k, v in fields.items() if v is not _UNSET})

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Priority:
        return Priority.parse(value)


class Parallel(_Node):
    """Handler calls run side by side; the step's result is the list of theirs."""

    kind: Literal["parallel"] = "parallel"
    steps: tuple[Step, ...] = Field(min_length=1)


class When(_Node):
    kind: Literal["when"] = "when"
    condition: Condition
    then: tuple[Node, ...] = ()
    otherwise: tuple[Node, ...] = ()


class Loop(_Node):
    """Runs `body`, then stops once `until` holds or after `max_iterations` runs."""

    kind: Literal["loop"] = "loop"
    body: tuple[Node, ...] = Field(min_length=1)
    until: Condition
    max_iterations: int = Field(ge=1, le=MAX_ITERATIONS)


class Wait(_Node):
    """Waits `seconds`, or until a condition holds (failing after `timeout_s`, if given)."""

    kind: Literal["wait"] = "wait"
    seconds: float | None = Field(default=None, gt=0)
    until: Condition | None = None
    timeout_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Wait:
        if (self.seconds is None) == (self.until is None):
            raise ValueError("a wait takes seconds=... or until=..., one of them")
        if self.timeout_s is not None and self.until is None:
            raise ValueError("timeout_s goes with until=...")
        return self


Node = Annotated[Step | Parallel | When | Loop | Wait, Field(discriminator="kind")]
When.model_rebuild()
Loop.model_rebuild()


class WorkflowSpec(Checked):
    """A checked workflow definition (what is stored with each run, as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    steps: tuple[Node, ...] = Field(min_length=1)

    def handlers(self) -> list[str]:
        return sorted({s.handler for s in _walk(self.steps) if isinstance(s, Step)})

    def input_fields(self) -> list[str]:
        """The `input.<key>` names its conditions and references read."""
        paths = [c.field for c in _conditions(self.steps)] + [
            p for s in _walk(self.steps) if isinstance(s, Step) for p in refs_in(s.payload)
        ]
        return sorted({p.split(".")[1] for p in paths if p.startswith("input.") and "." in p})


class Workflow:
    """Builds a WorkflowSpec one call at a time; every call returns the builder."""

    def __init__(self, name: str = "workflow") -> None:
        self.name = name
        self.nodes: list[Step | Parallel | When | Loop | Wait] = []

    def _add(self, node: Step | Parallel | When | Loop | Wait) -> Workflow:
        self.nodes.append(node)
        return self

    def _name(self, kind: str, name: str | None) -> str:
        return name or f"{kind}_{next(_AUTO)}"  # unique across fragments built apart

    def step(self, name: str, handler: str, payload: Mapping[str, Any] | None = None,
             **options: Any) -> Workflow:
        return self._add(Step(name, handler, payload, **options))

    def parallel(self, name: str, steps: Iterable[Step]) -> Workflow:
        return self._add(Parallel(name=name, steps=tuple(steps)))

    def when(self, cond: Any, *, then: Any = (), otherwise: Any = (),
             name: str | None = None) -> Workflow:
        return self._add(When(
            name=self._name("when", name), condition=condition(cond),
            then=_nodes(then), otherwise=_nodes(otherwise),
        ))

    def loop(self, name: str, body: Any, *, until: Any,
             max_iterations: int | None = None) -> Workflow:
        if max_iterations is None:
            raise ValidationError(f"loop {name!r} needs max_iterations (a loop must end)")
        return self._add(Loop(
            name=name, body=_nodes(body), until=condition(until), max_iterations=max_iterations,
        ))

    def wait(self, seconds: float | None = None, *, until: Any = None,
             timeout_s: float | None = None, name: str | None = None) -> Workflow:
        return self._add(Wait(
            name=self._name("wait", name), seconds=seconds,
            until=None if until is None else condition(until), timeout_s=timeout_s,
        ))

    def spec(self) -> WorkflowSpec:
        return checked(WorkflowSpec(name=self.name, steps=tuple(self.nodes)))


def _nodes(value: Any) -> tuple[Any, ...]:
    if isinstance(value, Workflow):
        return tuple(value.nodes)
    if isinstance(value, _Node):
        return (value,)
    return tuple(value)


def _walk(nodes: Sequence[Any]) -> Iterable[Any]:
    for node in nodes:
        yield node
        if isinstance(node, Parallel):
            yield from node.steps
        elif isinstance(node, When):
            yield from _walk(node.then)
            yield from _walk(node.otherwise)
        elif isinstance(node, Loop):
            yield from _walk(node.body)


def _conditions(nodes: Sequence[Any]) -> Iterable[Condition]:
    for node in _walk(nodes):
        if isinstance(node, When):
            yield node.condition
        elif isinstance(node, Loop | Wait) and node.until is not None:
            yield node.until


def checked(spec: WorkflowSpec) -> WorkflowSpec:
    """Unique names, and every condition or reference reads `input`, `vars` or a step
    that runs before it. ValidationError otherwise."""
    seen: set[str] = set()
    for node in _walk(spec.steps):
        if node.name in RESERVED:
            raise ValidationError(f"step name {node.name!r} is reserved")
        if node.name in seen:
            raise ValidationError(f"two steps are named {node.name!r}; names must be unique")
        seen.add(node.name)
    _check_reads(spec.steps, set(RESERVED))
    return spec


def _check_reads(nodes: Sequence[Any], produced: set[str]) -> set[str]:
    def need(path: str, where: str) -> None:
        root = path.split(".", 1)[0]
        if root not in produced:
            raise ValidationError(
                f"{where} reads {path!r}, but no earlier step is named {root!r} "
                f"(readable: {', '.join(sorted(produced))})"
            )

    for node in nodes:
        if isinstance(node, Step | Parallel):
            for step in node.steps if isinstance(node, Parallel) else (node,):
                for path in refs_in(step.payload):
                    need(path, f"step {step.name!r}")
            produced |= {node.name} | ({s.name for s in node.steps}
                                       if isinstance(node, Parallel) else set())
        elif isinstance(node, When):
            need(node.condition.field, f"the condition of {node.name!r}")
            produced = _check_reads(node.then, set(produced)) | _check_reads(
                node.otherwise, set(produced))
        elif isinstance(node, Loop):  # `until` may read the body's steps and <loop>.iterations
            produced = _check_reads(node.body, produced | {node.name})
            need(node.until.field, f"the until of loop {node.name!r}")
        elif isinstance(node, Wait) and node.until is not None and node.until.root != "vars":
            raise ValidationError(
                f"wait {node.name!r} waits on {node.until.field!r}, which cannot change while "
                "it waits: wait on vars.<key> (set with workflows.set_vars)"
            )
    return produced


# -- compiled form --------------------------------------------------------------------

def compile_spec(spec: WorkflowSpec) -> list[dict[str, Any]]:
    """Instructions: run (steps), branch (condition, else), jump, loop_start, loop_end
    (until, max, body), wait. A run's position is an index into this list."""
    program: list[dict[str, Any]] = []
    _emit(spec.steps, program)
    return program


def _emit(nodes: Sequence[Any], out: list[dict[str, Any]]) -> None:
    for node in nodes:
        if isinstance(node, Step | Parallel):
            steps = node.steps if isinstance(node, Parallel) else (node,)
            out.append({"op": "run", "name": node.name, "group": isinstance(node, Parallel),
                        "steps": [s.model_dump(mode="json") for s in steps]})
        elif isinstance(node, When):
            branch: dict[str, Any] = {
                "op": "branch", "name": node.name, "cond": node.condition.model_dump()
            }
            out.append(branch)
            _emit(node.then, out)
            jump: dict[str, Any] = {"op": "jump", "to": -1}
            out.append(jump)
            branch["else"] = len(out)
            _emit(node.otherwise, out)
            jump["to"] = len(out)
        elif isinstance(node, Loop):
            out.append({"op": "loop_start", "name": node.name})
            body = len(out)
            _emit(node.body, out)
            out.append({"op": "loop_end", "name": node.name, "until": node.until.model_dump(),
                        "max": node.max_iterations, "body": body})
        elif isinstance(node, Wait):
            out.append({"op": "wait", "name": node.name, "seconds": node.seconds,
                        "until": None if node.until is None else node.until.model_dump(),
                        "timeout_s": node.timeout_s})


# -- runs -----------------------------------------------------------------------------

class WorkflowStatus(StrEnum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)


class StepRun(BaseModel):
    """What became of one step (for a step inside a loop: its latest run)."""

    name: str
    state: str  # RUNNING, SUCCEEDED, FAILED, CANCELLED, WAITING, SKIPPED
    task_ids: list[str] = []
    runs: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


class WorkflowRun(BaseModel):
    """A workflow run's state, as stored in Redis and as `bq.workflows.status()` returns it."""

    id: str
    name: str
    status: WorkflowStatus = WorkflowStatus.RUNNING
    position: int = 0  # index into the compiled program
    context: dict[str, Any] = {}
    iterations: dict[str, int] = {}
    steps: dict[str, StepRun] = {}
    running: list[str] = []  # task ids of the step in flight
    advance_id: str | None = None  # the one advance task allowed to move the run on
    sequence: int = 0  # numbers the tasks each advance submits (stable across a replay)
    wait_deadline: float | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def current(self) -> str | None:
        """The step in flight, or waited on, if any."""
        active = [s.name for s in self.steps.values() if s.state in ("RUNNING", "WAITING")]
        return active[-1] if active else None
