"""How a workflow run moves: advance tasks on the workers, under a per-run lock.

A run is a hash in Redis: its definition and its state (a WorkflowRun). Nothing runs
in a producer. An *advance* (the built-in handler `bo_queue.workflow.advance`) loads the
run, collects the results of the step in flight, then walks the compiled program
(branches, loop ends, waits that are over) until it must wait again: it submits the next
step's tasks and, in the same batch, the next advance with `depends_on` those tasks
(and on_dependency_failure="run"), so the queue's own dependency release wakes the
workflow when the step ends. A timed wait is an advance with a countdown; a wait on a
condition is woken by `set_vars`.

Only the advance whose id the run names may move it (any other is stale: a duplicate,
or one a cancel or resume superseded). Task ids are derived from the run and a sequence
number saved with it, so an advance replayed after a crash resubmits the same ids and
skips those that exist: no step runs twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bo_queue.errors import (
    BOQueueError,
    BrokerUnavailableError,
    WorkflowError,
    WorkflowNotFoundError,
)
from bo_queue.states import TERMINAL_STATES, TaskState
from bo_queue.workflows.conditions import Condition, resolve
from bo_queue.workflows.models import (
    StepRun,
    WorkflowRun,
    WorkflowSpec,
    WorkflowStatus,
    compile_spec,
)

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core

ADVANCE = "bo_queue.workflow.advance"
LOCK_LEASE_S = 60.0  # an advance only submits tasks: far shorter than this
MAX_INSTRUCTIONS = 100_000  # per advance, against a definition that never waits
TERMINAL = frozenset(state.value for state in TERMINAL_STATES)


class WorkflowStore:
    """Runs in Redis: `{ns}:workflow:<id>` = {spec, run}; `{ns}:workflows` indexes them."""

    def __init__(self, bq: Core) -> None:
        self.bq = bq
        self.redis = bq.redis
        self.index = bq.keys.workflows
        self.key = bq.keys.workflow

    @contextmanager
    def lock(self, workflow_id: str) -> Iterator[None]:
        with self.redis.lock(self.key(workflow_id) + ":lock", timeout=LOCK_LEASE_S,
                             blocking_timeout=30):
            yield

    def create(self, spec: WorkflowSpec, run: WorkflowRun) -> bool:
        """False if a run with that id exists."""
        if not self.redis.hsetnx(self.key(run.id), "spec", spec.model_dump_json()):
            return False
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(run.id), "run", run.model_dump_json())
            pipe.zadd(self.index, {run.id: run.created_at.timestamp()})
            pipe.execute()
        return True

    def load(self, workflow_id: str) -> tuple[WorkflowSpec, WorkflowRun]:
        spec, run = self.redis.hmget(self.key(workflow_id), ["spec", "run"])
        if spec is None or run is None:
            raise WorkflowNotFoundError(workflow_id)
        return WorkflowSpec.model_validate_json(spec), WorkflowRun.model_validate_json(run)

    def run(self, workflow_id: str) -> WorkflowRun:
        raw = self.redis.hget(self.key(workflow_id), "run")
        if raw is None:
            raise WorkflowNotFoundError(workflow_id)
        return WorkflowRun.model_validate_json(raw)

    def save(self, run: WorkflowRun) -> None:
        run.updated_at = datetime.now(UTC)
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(run.id), "run", run.model_dump_json())
            if run.status.terminal:  # kept as long as task records are
                pipe.expire(self.key(run.id), self.bq.settings.result_expires_s)
            pipe.execute()

    def delete(self, workflow_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(workflow_id))
            pipe.zrem(self.index, workflow_id)
            pipe.execute()

    def ids(self, limit: int) -> list[str]:
        return [str(i) for i in self.redis.zrevrange(self.index, 0, limit - 1)]


def advance_id(run: WorkflowRun) -> str:
    return f"wf-{run.id}-{run.sequence}.advance"  # '.' is in no step name: no clash


def arm(bq: Core, run: WorkflowRun, *, depends_on: Sequence[str] = (),
        countdown: float | None = None, steps: Sequence[dict[str, Any]] = ()) -> None:
    """Submit `steps` (requests) and the advance that follows them; the run names that
    advance as the only one allowed to move it. Ids that exist (a replay) are skipped."""
    with bq.redis.pipeline(transaction=False) as pipe:
        for step in steps:
            pipe.hget(bq.keys.task(step["id"]), "state")
        taken = [state is not None for state in pipe.execute()]
    # A replay of an advance that crashed before saving: the advance it armed may have
    # run already (and found itself stale), and so may one a former replay armed. Go
    # past them to a fresh one; the steps stand.
    while (state := bq.redis.hget(bq.keys.task(advance_id(run)), "state")) in TERMINAL:
        run.sequence += 1
    nxt = advance_id(run)
    requests = [step for step, exists in zip(steps, taken, strict=True) if not exists]
    if state is None:
        requests.append({
            "id": nxt, "handler": ADVANCE, "payload": {"workflow_id": run.id},
            "depends_on": list(depends_on), "on_dependency_failure": "run",
            "countdown": countdown, "tags": (f"workflow:{run.id}",),
        })
    if requests:  # durable: an advance killed mid-submit loses no step
        bq.submit_many(requests, durable=True)
    run.advance_id = nxt


def advance(bq: Core, workflow_id: str, token: str) -> str:
    """Move the run on, if `token` is the advance it waits for. Returns its status."""
    store = WorkflowStore(bq)
    with store.lock(workflow_id):
        spec, run = store.load(workflow_id)
        if run.advance_id != token:
            return f"stale: {run.status}"
        run.advance_id = None
        if not run.status.terminal:
            try:
                _Machine(bq, compile_spec(spec), run).go()
            except BrokerUnavailableError:
                raise  # the advance task retries
            except BOQueueError as exc:  # e.g. a resolved payload over the size limit
                _cannot_go_on(run, f"cannot go on: {exc}")
        store.save(run)
        return run.status.value


def _cannot_go_on(run: WorkflowRun, reason: str) -> None:
    """Fail the run; a step it was submitting never started."""
    run.status, run.error, run.running = WorkflowStatus.FAILED, reason, []
    for step in run.steps.values():
        if step.state in ("RUNNING", "WAITING"):
            step.state, step.error = "FAILED", reason


class _Machine:
    def __init__(self, bq: Core, program: list[dict[str, Any]], run: WorkflowRun) -> None:
        self.bq = bq
        self.program = program
        self.run = run

    def go(self) -> None:
        run = self.run
        try:
            if run.running and not self._collect():
                return
            for _ in range(MAX_INSTRUCTIONS):
                if run.status is not WorkflowStatus.RUNNING:
                    return
                if run.position >= len(self.program):
                    run.status = WorkflowStatus.SUCCEEDED
                    return
                ins = self.program[run.position]
                if getattr(self, "_" + ins["op"])(ins):
                    return  # waiting for tasks, a timer or a signal
            self._fail(f"took over {MAX_INSTRUCTIONS} instructions without waiting")
        except WorkflowError as exc:  # a field no step produced, a comparison that fails
            name = self.program[run.position].get("name", "?")
            self._fail(f"at {name!r}: {exc}")

    def _fail(self, reason: str) -> None:
        self.run.status = WorkflowStatus.FAILED
        self.run.error = reason

    def _step(self, name: str, **fields: Any) -> StepRun:
        old = self.run.steps.get(name)
        step = StepRun(name=name, runs=old.runs if old else 0, **fields)
        self.run.steps[name] = step
        return step

    # -- steps in flight ------------------------------------------------------------------

    def _collect(self) -> bool:
        """Record the results of the step in flight; False if the run cannot go on."""
        run, ins = self.run, self.program[self.run.position]
        infos = self.bq.records.get_many(run.running)
        unfinished = [i for i, info in zip(run.running, infos, strict=True)
                      if info is not None and not info.state.terminal]
        if unfinished:  # not woken by their release (a manual resume): wait for them
            run.sequence += 1
            arm(self.bq, run, depends_on=unfinished)
            return False
        metas = self.bq.results.fetch_many(run.running)
        results, failed = [], None
        now = time.time()
        for step, info, meta in zip(ins["steps"], infos, metas, strict=True):
            entry = run.steps[step["name"]]
            entry.finished_at = now
            if info is not None and info.state is TaskState.SUCCEEDED:
                value = meta.get("result") if meta else None
                entry.state = "SUCCEEDED"
                run.context[step["name"]] = value
                results.append(value)
            else:
                entry.state = info.state.value if info else "UNKNOWN"
                entry.error = info.error if info else "its task record is gone"
                failed = failed or f"step {step['name']!r} {entry.state}: {entry.error or ''}"
        run.running = []
        if ins["group"]:
            group = run.steps[ins["name"]]
            group.state, group.finished_at = ("FAILED" if failed else "SUCCEEDED"), now
            run.context[ins["name"]] = results
        if failed:
            self._fail(failed.rstrip(": "))
            return False
        run.position += 1
        return run.status is WorkflowStatus.RUNNING  # paused: stop after the step

    # -- instructions: each returns True when the run must wait -----------------------------

    def _run(self, ins: dict[str, Any]) -> bool:
        run = self.run
        run.sequence += 1
        now = time.time()
        requests = []
        for step in ins["steps"]:
            task_id = f"wf-{run.id}-{run.sequence}-{step['name']}"
            requests.append({
                "id": task_id, "handler": step["handler"],
                "payload": resolve(step["payload"], run.context), "queue": step["queue"],
                "priority": step["priority"], "tags": (f"workflow:{run.id}",),
            })
            entry = self._step(step["name"], state="RUNNING", task_ids=[task_id], started_at=now)
            entry.runs += 1
        if ins["group"]:
            entry = self._step(ins["name"], state="RUNNING", started_at=now,
                               task_ids=[r["id"] for r in requests])
            entry.runs += 1
        run.running = [r["id"] for r in requests]
        arm(self.bq, run, depends_on=run.running, steps=requests)
        return True

    def _branch(self, ins: dict[str, Any]) -> bool:
        took = Condition.model_validate(ins["cond"]).holds(self.run.context)
        self.run.context[ins["name"]] = {"took": "then" if took else "otherwise"}
        self._step(ins["name"], state="SUCCEEDED", finished_at=time.time())
        self.run.position = self.run.position + 1 if took else ins["else"]
        return False

    def _jump(self, ins: dict[str, Any]) -> bool:
        self.run.position = ins["to"]
        return False

    def _loop_start(self, ins: dict[str, Any]) -> bool:
        self.run.iterations[ins["name"]] = 0
        self.run.context[ins["name"]] = {"iterations": 0}
        self._step(ins["name"], state="RUNNING", started_at=time.time())
        self.run.position += 1
        return False

    def _loop_end(self, ins: dict[str, Any]) -> bool:
        run, name = self.run, ins["name"]
        done = run.iterations.get(name, 0) + 1
        run.iterations[name] = done
        run.context[name] = {"iterations": done}
        if Condition.model_validate(ins["until"]).holds(run.context):
            run.context[name]["stopped_by"] = "until"
        elif done >= ins["max"]:
            run.context[name]["stopped_by"] = "max_iterations"
        else:
            run.position = ins["body"]
            return False
        entry = self._step(name, state="SUCCEEDED", finished_at=time.time())
        entry.runs = done
        run.position += 1
        return False

    def _wait(self, ins: dict[str, Any]) -> bool:
        run, now = self.run, time.time()
        until = None if ins["until"] is None else Condition.model_validate(ins["until"])
        if until is not None and until.holds(run.context, missing=False):
            return self._waited(ins)
        limit = ins["seconds"] if until is None else ins["timeout_s"]
        if limit is None:  # a wait on a condition alone: set_vars wakes it
            self._step(ins["name"], state="WAITING", started_at=now)
            return True
        if run.wait_deadline is None:
            run.wait_deadline = now + limit
            self._step(ins["name"], state="WAITING", started_at=now)
        elif now >= run.wait_deadline - 0.01:
            if until is None:
                return self._waited(ins)
            self._fail(f"wait {ins['name']!r} timed out after {limit} s: {until} never held")
            return True
        run.sequence += 1
        arm(self.bq, run, countdown=max(0.0, run.wait_deadline - now))
        return True

    def _waited(self, ins: dict[str, Any]) -> bool:
        self.run.wait_deadline = None
        self._step(ins["name"], state="SUCCEEDED", finished_at=time.time())
        self.run.position += 1
        return False
