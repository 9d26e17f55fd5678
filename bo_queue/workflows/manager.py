"""`bq.workflows`: start workflow runs and watch, pause, resume, signal and cancel them."""

from __future__ import annotations

import builtins
import contextlib
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pydantic
from redis.exceptions import LockError

from bo_queue.errors import (
    ValidationError,
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from bo_queue.validation import check_payload
from bo_queue.workflows.engine import WorkflowStore, advance_id, arm
from bo_queue.workflows.models import (
    Workflow,
    WorkflowRun,
    WorkflowSpec,
    WorkflowStatus,
    checked,
)

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core

Definition = Workflow | WorkflowSpec | Mapping[str, Any]
RUN_ID = re.compile(r"[A-Za-z0-9._@-]{1,100}")


def as_spec(definition: Definition) -> WorkflowSpec:
    """A checked spec from a builder, a spec, or its JSON form (a dict)."""
    if isinstance(definition, Workflow):
        return definition.spec()
    if isinstance(definition, WorkflowSpec):
        return checked(definition)
    try:
        return checked(WorkflowSpec.model_validate(definition))
    except pydantic.ValidationError as exc:
        raise ValidationError(f"bad workflow definition: {exc}") from None


class WorkflowManager:
    def __init__(self, bq: Core) -> None:
        self.bq = bq
        self.store = WorkflowStore(bq)

    def run(self, definition: Definition, inputs: Mapping[str, Any] | None = None, *,
            workflow_id: str | None = None) -> WorkflowRun:
        """Start a run. Rejects (ValidationError, nothing started) an unknown step
        handler, or an `input.<key>` a condition or reference reads that `inputs` lacks."""
        spec = as_spec(definition)
        if workflow_id is not None and not RUN_ID.fullmatch(workflow_id):
            raise ValidationError(f"bad workflow id {workflow_id!r}: 1-100 of A-Z a-z 0-9 . _ @ -")
        inputs = dict(inputs or {})
        with self.bq.broker_errors():
            for name in spec.handlers():
                self.bq.handler_queue(name)  # UnknownHandlerError names it
            missing = [key for key in spec.input_fields() if key not in inputs]
            if missing:
                raise ValidationError(f"workflow {spec.name!r} reads inputs it was not given: "
                                      f"{', '.join(missing)}")
            check_payload(inputs, self.bq.settings.max_payload_bytes)
            now = datetime.now(UTC)
            run = WorkflowRun(
                id=workflow_id or uuid.uuid4().hex, name=spec.name,
                context={"input": inputs, "vars": {}}, created_at=now, updated_at=now,
            )
            run.advance_id = advance_id(run)  # stored first: the advance may start at once
            if not self.store.create(spec, run):
                raise ValidationError(f"a workflow run with id {run.id!r} exists")
            try:
                arm(self.bq, run)
            except BaseException:
                self.store.delete(run.id)  # no run without an advance to move it
                raise
        return run

    def status(self, workflow_id: str) -> WorkflowRun:
        with self.bq.broker_errors():
            return self.store.run(workflow_id)

    get = status

    def definition(self, workflow_id: str) -> WorkflowSpec:
        with self.bq.broker_errors():
            return self.store.load(workflow_id)[0]

    def list(self, status: WorkflowStatus | str | None = None,
             limit: int = 100) -> builtins.list[WorkflowRun]:
        """The newest runs first (those past their retention are gone)."""
        try:
            wanted = None if status is None else WorkflowStatus(status)
        except ValueError:
            raise ValidationError(f"unknown workflow status {status!r}") from None
        runs = []
        with self.bq.broker_errors():
            for workflow_id in self.store.ids(limit):
                with contextlib.suppress(WorkflowNotFoundError):  # past its retention
                    runs.append(self.store.run(workflow_id))
        return [r for r in runs if wanted is None or r.status is wanted]

    def pause(self, workflow_id: str) -> WorkflowRun:
        """Start no new step; the one in flight finishes and is recorded."""
        return self._change(workflow_id, self._pause)

    def resume(self, workflow_id: str) -> WorkflowRun:
        return self._change(workflow_id, self._resume)

    def cancel(self, workflow_id: str, *, terminate: bool = False) -> WorkflowRun:
        """Stop the run: its running steps are cancelled (killed with terminate=True), its
        pending advance too; nothing more starts. A run that has ended is returned as is."""
        return self._change(workflow_id, lambda run: self._cancel(run, terminate))

    def set_vars(self, workflow_id: str, /, **values: Any) -> WorkflowRun:
        """Set `vars.<key>` in the run's context and re-check a wait on a condition."""
        check_payload(values, self.bq.settings.max_payload_bytes)
        return self._change(workflow_id, lambda run: self._set_vars(run, values))

    def wait(self, workflow_id: str, timeout: float = 600, poll_s: float = 0.2) -> WorkflowRun:
        """Block until the run has ended; WorkflowTimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.status(workflow_id)
            if run.status.terminal:
                return run
            if time.monotonic() > deadline:
                raise WorkflowTimeoutError(
                    f"workflow {workflow_id} is still {run.status} after {timeout} s "
                    f"(at {run.current or 'no step'})"
                )
            time.sleep(poll_s)

    # -- changes, each under the run's lock ---------------------------------------------------

    def _change(self, workflow_id: str, change: Any) -> WorkflowRun:
        try:
            with self.bq.broker_errors(), self.store.lock(workflow_id):
                run = self.store.run(workflow_id)
                change(run)
                self.store.save(run)
        except LockError:
            raise WorkflowError(f"workflow {workflow_id} stayed busy; try again") from None
        return run

    def _pause(self, run: WorkflowRun) -> None:
        if run.status is WorkflowStatus.RUNNING:
            run.status = WorkflowStatus.PAUSED
        elif run.status is not WorkflowStatus.PAUSED:
            raise WorkflowError(f"workflow {run.id} has ended ({run.status}); cannot pause it")

    def _resume(self, run: WorkflowRun) -> None:
        if run.status.terminal:
            raise WorkflowError(f"workflow {run.id} has ended ({run.status}); cannot resume it")
        if run.status is WorkflowStatus.RUNNING and not self._stalled(run):
            return
        run.status = WorkflowStatus.RUNNING
        if run.advance_id is None or self._stalled(run):  # else the pending one carries on
            run.sequence += 1
            arm(self.bq, run, depends_on=run.running)

    def _stalled(self, run: WorkflowRun) -> bool:
        """The advance the run waits for has ended (or is gone) without moving it on:
        only a crash does that. resume() on such a RUNNING run arms a new one."""
        if run.advance_id is None:
            return False
        state = self.bq.records.state(run.advance_id)
        return state is None or state.terminal

    def _cancel(self, run: WorkflowRun, terminate: bool) -> None:
        if run.status.terminal:
            return
        run.status = WorkflowStatus.CANCELLED
        run.error = "cancelled by request"
        if run.advance_id is not None:
            self.bq.cancel(run.advance_id)
            run.advance_id = None
        for task_id in run.running:
            self.bq.cancel(task_id, terminate=terminate, reason=f"workflow {run.id} cancelled")
        for step in run.steps.values():
            if step.state in ("RUNNING", "WAITING"):
                step.state = "CANCELLED"

    def _set_vars(self, run: WorkflowRun, values: Mapping[str, Any]) -> None:
        run.context.setdefault("vars", {}).update(values)
        if run.status is WorkflowStatus.RUNNING and not run.running:
            run.sequence += 1  # a new advance supersedes a pending timer
            arm(self.bq, run)
