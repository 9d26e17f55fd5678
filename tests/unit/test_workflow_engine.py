"""Workflow runs on fakeredis, moved by hand: `engine.advance(bq, id, token)` is called here
as a worker's advance task would be, step tasks are "finished" by moving their records and
storing their results, and nothing reaches a broker (bo_queue.workflows.engine, .manager)."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from bo_queue import (
    BOQueue,
    TaskState,
    UnknownHandlerError,
    ValidationError,
    WorkflowError,
)
from bo_queue.workflows import engine
from bo_queue.workflows.conditions import ref
from bo_queue.workflows.engine import ADVANCE, WorkflowStore
from bo_queue.workflows.models import Step, Workflow, WorkflowRun, WorkflowStatus

Sent = list[tuple[str, dict[str, Any]]]
HANDLERS = ("t.a", "t.b", "t.c", ADVANCE)


class Flow:
    """A BOQueue on fakeredis whose sends are recorded, and helpers to move runs by hand."""

    def __init__(self, bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bq = bq
        self.sent: Sent = []
        self.handlers = set(HANDLERS)
        self.store = WorkflowStore(bq)

        def send(task_id: str, message: Any, pipe: Any = None) -> None:
            self.sent.append((task_id, dict(message)))

        def handler_entry(name: str) -> dict[str, Any]:
            if name not in self.handlers:
                raise UnknownHandlerError(name, sorted(self.handlers))
            return {}

        monkeypatch.setattr(bq, "send", send)
        monkeypatch.setattr(bq, "handler_entry", handler_entry)

    # -- runs -------------------------------------------------------------------------------

    def start(self, definition: Any, inputs: dict[str, Any] | None = None,
              workflow_id: str = "w1") -> WorkflowRun:
        return self.bq.workflows.run(definition, inputs, workflow_id=workflow_id)

    def run(self, workflow_id: str = "w1") -> WorkflowRun:
        return self.store.run(workflow_id)

    def raw(self, workflow_id: str = "w1") -> str:
        return str(self.bq.redis.hget(self.bq.keys.workflow(workflow_id), "run"))

    def advance(self, token: str | None = None, workflow_id: str = "w1") -> str:
        """Run an advance task: the engine, then its record ends as a worker's would."""
        token = token or self.run(workflow_id).advance_id
        assert token is not None, "the run waits for no advance"
        status = engine.advance(self.bq, workflow_id, token)
        self.bq.records.transition(token, TaskState.SUCCEEDED, finished_at=time.time())
        return status

    # -- tasks ------------------------------------------------------------------------------

    def finish(self, task_id: str, result: Any = None) -> None:
        """The step task succeeded with `result` (stored as Celery's backend stores it)."""
        meta = {"status": "SUCCESS", "result": result, "task_id": task_id}
        self.bq.results.redis.set(self.bq.results.key(task_id), json.dumps(meta))
        assert self.bq.records.transition(task_id, TaskState.SUCCEEDED, finished_at=time.time())

    def fail(self, task_id: str, error: str) -> None:
        meta = {"status": "FAILURE", "task_id": task_id,
                "result": {"exc_type": "RuntimeError", "exc_message": [error]}}
        self.bq.results.redis.set(self.bq.results.key(task_id), json.dumps(meta))
        assert self.bq.records.transition(
            task_id, TaskState.FAILED, finished_at=time.time(), error=f"RuntimeError: {error}"
        )

    def ids(self) -> list[str]:
        return [task_id for task_id, _ in self.sent]

    def steps_sent(self) -> Sent:
        return [(i, m) for i, m in self.sent if m["handler"] != ADVANCE]

    def advances_sent(self) -> list[str]:
        return [i for i, m in self.sent if m["handler"] == ADVANCE]

    def state(self, task_id: str) -> TaskState | None:
        return self.bq.records.state(task_id)


@pytest.fixture
def flow(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> Flow:
    return Flow(bq, monkeypatch)


def adv(seq: int, workflow_id: str = "w1") -> str:
    return f"wf-{workflow_id}-{seq}.advance"


def task(seq: int, name: str, workflow_id: str = "w1") -> str:
    return f"wf-{workflow_id}-{seq}-{name}"


def two_steps() -> Workflow:
    return (
        Workflow("two")
        .step("a", "t.a", {"n": ref("input.n")})
        .step("b", "t.b", {"rows": ref("a.rows"), "fixed": 1})
    )


# -- starting ----------------------------------------------------------------------------------


def test_run_stores_the_run_and_submits_its_first_advance(flow: Flow) -> None:
    run = flow.start(two_steps(), {"n": 3})
    assert run.id == "w1"
    assert run.advance_id == adv(0) == "wf-w1-0.advance"
    assert run.status is WorkflowStatus.RUNNING
    assert run.context == {"input": {"n": 3}, "vars": {}}
    stored = flow.run()
    assert stored.advance_id == adv(0)
    assert (stored.position, stored.sequence, stored.running) == (0, 0, [])
    assert flow.bq.workflows.definition("w1") == two_steps().spec()
    assert flow.ids() == [adv(0)]
    message = flow.sent[0][1]
    assert message["handler"] == ADVANCE
    assert message["payload"] == {"workflow_id": "w1"}
    info = flow.bq.info(adv(0))
    assert info.tags == ("workflow:w1",)
    assert info.depends_on == ()
    assert [r.id for r in flow.bq.workflows.list()] == ["w1"]
    assert flow.steps_sent() == []  # nothing runs in the producer


def test_run_rejects_a_bad_id_and_stores_nothing(flow: Flow) -> None:
    with pytest.raises(ValidationError, match="bad workflow id"):
        flow.start(two_steps(), {"n": 1}, workflow_id="has space")
    assert flow.bq.redis.keys("*") == []
    assert flow.sent == []
    assert flow.bq.workflows.list() == []


def test_run_rejects_missing_inputs_an_unknown_handler_and_a_taken_id(flow: Flow) -> None:
    with pytest.raises(ValidationError, match="inputs it was not given: n"):
        flow.start(two_steps(), {})
    with pytest.raises(UnknownHandlerError, match=r"t\.nope"):
        flow.start(Workflow().step("x", "t.nope"))
    assert flow.bq.redis.keys("*") == []
    flow.start(two_steps(), {"n": 1})
    before = flow.raw()
    with pytest.raises(ValidationError, match="exists"):
        flow.start(two_steps(), {"n": 2})
    assert flow.raw() == before
    assert flow.ids() == [adv(0)]


def test_list_rejects_an_unknown_status(flow: Flow) -> None:
    with pytest.raises(ValidationError, match="bogus"):
        flow.bq.workflows.list(status="bogus")
    flow.start(two_steps(), {"n": 1})
    assert [r.id for r in flow.bq.workflows.list(status="RUNNING")] == ["w1"]
    assert flow.bq.workflows.list(status=WorkflowStatus.SUCCEEDED) == []


# -- advancing ---------------------------------------------------------------------------------


def test_advance_submits_the_first_step_and_the_next_advance(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    assert flow.advance(adv(0)) == "RUNNING"
    run = flow.run()
    step_id = task(1, "a")
    assert run.running == [step_id]
    assert run.advance_id == adv(1)
    assert (run.position, run.sequence) == (0, 1)
    assert run.steps["a"].state == "RUNNING"
    assert run.steps["a"].task_ids == [step_id] and run.steps["a"].runs == 1
    assert run.current == "a"
    # the step is sent; the next advance waits for it, parked
    assert flow.ids() == [adv(0), step_id]
    message = flow.sent[1][1]
    assert message["handler"] == "t.a"
    assert message["payload"] == {"n": 3}  # the reference, resolved
    advance = flow.bq.info(adv(1))
    assert advance.state is TaskState.PENDING
    assert advance.depends_on == (step_id,)
    assert advance.on_dependency_failure == "run"
    assert advance.tags == ("workflow:w1",)
    assert flow.bq.info(step_id).tags == ("workflow:w1",)


def test_a_wrong_token_is_stale_and_changes_nothing(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance(adv(0))
    keys = sorted(flow.bq.redis.keys("*"))
    before = flow.raw()
    for token in ("wf-w1-7.advance", adv(0), adv(2), "whatever"):
        assert engine.advance(flow.bq, "w1", token) == "stale: RUNNING"
    assert flow.raw() == before
    assert sorted(flow.bq.redis.keys("*")) == keys
    assert flow.ids() == [adv(0), task(1, "a")]


def test_finishing_a_step_records_its_result_and_goes_on(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance(adv(0))
    flow.finish(task(1, "a"), {"rows": [1, 2]})
    assert flow.ids()[-1] == adv(1)  # the queue released the advance once the step ended
    assert flow.advance(adv(1)) == "RUNNING"
    run = flow.run()
    assert run.context["a"] == {"rows": [1, 2]}
    assert run.steps["a"].state == "SUCCEEDED" and run.steps["a"].finished_at is not None
    assert run.running == [task(2, "b")]
    assert run.position == 1
    step_id, message = flow.steps_sent()[-1]
    assert step_id == task(2, "b")
    assert message["payload"] == {"rows": [1, 2], "fixed": 1}

    flow.finish(task(2, "b"), "done")
    assert flow.advance(adv(2)) == "SUCCEEDED"
    run = flow.run()
    assert run.status is WorkflowStatus.SUCCEEDED
    assert run.context == {"input": {"n": 3}, "vars": {}, "a": {"rows": [1, 2]}, "b": "done"}
    assert run.advance_id is None and run.running == [] and run.current is None
    assert 0 < flow.bq.redis.ttl(flow.bq.keys.workflow("w1")) <= flow.bq.settings.result_expires_s
    assert Counter(flow.ids()) == Counter(
        [adv(0), task(1, "a"), adv(1), task(2, "b"), adv(2)]
    )
    assert engine.advance(flow.bq, "w1", adv(2)) == "stale: SUCCEEDED"


def test_a_failed_step_fails_the_run(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance(adv(0))
    flow.fail(task(1, "a"), "boom")
    assert flow.ids()[-1] == adv(1)  # on_dependency_failure="run": the advance still runs
    assert flow.advance(adv(1)) == "FAILED"
    run = flow.run()
    assert run.status is WorkflowStatus.FAILED
    assert run.error is not None and "step 'a' FAILED" in run.error and "boom" in run.error
    assert run.steps["a"].state == "FAILED"
    assert [i for i, _ in flow.steps_sent()] == [task(1, "a")]  # b never started


def test_a_parallel_group_collects_a_list(flow: Flow) -> None:
    flow.start(Workflow().parallel("p", [Step("x", "t.a"), Step("y", "t.b")])
               .step("after", "t.c", {"got": ref("p")}))
    flow.advance(adv(0))
    assert sorted(flow.run().running) == [task(1, "x"), task(1, "y")]
    flow.finish(task(1, "x"), 1)
    assert flow.advances_sent() == [adv(0)]  # waits for both
    flow.finish(task(1, "y"), 2)
    assert flow.advances_sent() == [adv(0), adv(1)]
    flow.advance(adv(1))
    run = flow.run()
    assert run.context["p"] == [1, 2] and run.context["x"] == 1 and run.context["y"] == 2
    assert run.steps["p"].state == "SUCCEEDED"
    assert flow.steps_sent()[-1][0] == task(2, "after")
    assert flow.steps_sent()[-1][1]["payload"] == {"got": [1, 2]}


# -- branches and loops ------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "took", "ran", "skipped"),
                         [(7, "then", "high", "low"), (2, "otherwise", "low", "high")])
def test_a_branch_takes_then_or_otherwise(
    flow: Flow, score: int, took: str, ran: str, skipped: str
) -> None:
    flow.start(
        Workflow("branch")
        .step("measure", "t.a", {"score": ref("input.score")})
        .when("measure.score > 5", then=Step("high", "t.b", {"got": ref("measure.score")}),
              otherwise=Step("low", "t.c", {"got": ref("measure.score")}), name="pick")
        .step("after", "t.a"),
        {"score": score},
    )
    flow.advance()
    flow.finish(task(1, "measure"), {"score": score})
    flow.advance()
    run = flow.run()
    assert run.context["pick"] == {"took": took}
    assert run.steps["pick"].state == "SUCCEEDED"
    step_id, message = flow.steps_sent()[-1]
    assert step_id == task(2, ran)
    assert message["payload"] == {"got": score}
    flow.finish(step_id, "ok")
    flow.advance()
    assert flow.steps_sent()[-1][0] == task(3, "after")  # the jump past otherwise, or not
    flow.finish(task(3, "after"))
    assert flow.advance() == "SUCCEEDED"
    run = flow.run()
    assert skipped not in run.steps and skipped not in run.context
    assert run.context[ran] == "ok"


def test_a_loop_stops_at_max_iterations(flow: Flow) -> None:
    flow.start(
        Workflow("loop")
        .loop("capped", Step("tick", "t.a", {"i": ref("capped.iterations")}),
              until="tick.n >= 100", max_iterations=3)
        .step("after", "t.b", {"loops": ref("capped.iterations")})
    )
    flow.advance()
    for n in (1, 2, 3):
        step_id = flow.run().running[0]
        assert flow.steps_sent()[-1][0] == step_id
        flow.finish(step_id, {"n": n})
        flow.advance()
    run = flow.run()
    assert run.context["capped"] == {"iterations": 3, "stopped_by": "max_iterations"}
    assert run.iterations == {"capped": 3}
    assert run.steps["tick"].runs == 3
    assert run.steps["capped"].state == "SUCCEEDED" and run.steps["capped"].runs == 3
    sent = flow.steps_sent()
    assert [m["payload"] for _, m in sent] == [{"i": 0}, {"i": 1}, {"i": 2}, {"loops": 3}]
    assert len({i for i, _ in sent}) == 4  # each iteration its own task id
    assert sent[-1][0] == run.running[0]


def test_a_loop_stops_when_until_holds(flow: Flow) -> None:
    flow.start(Workflow().loop("poll", Step("check", "t.a"), until="check.done == true",
                               max_iterations=10))
    flow.advance()
    for done in (False, True):
        flow.finish(flow.run().running[0], {"done": done})
        flow.advance()
    run = flow.run()
    assert run.status is WorkflowStatus.SUCCEEDED
    assert run.context["poll"] == {"iterations": 2, "stopped_by": "until"}
    assert len(flow.steps_sent()) == 2


def test_nested_loops_restart_the_inner_loop(flow: Flow) -> None:
    flow.start(Workflow().loop(
        "outer",
        Workflow().loop("inner", Step("s", "t.a"), until="s.ok == true", max_iterations=2),
        until="outer.iterations >= 2", max_iterations=5,
    ))
    flow.advance()
    while flow.run().running:
        flow.finish(flow.run().running[0], {"ok": False})
        flow.advance()
    run = flow.run()
    assert run.status is WorkflowStatus.SUCCEEDED
    assert len(flow.steps_sent()) == 4  # 2 outer x 2 inner
    assert run.context["outer"] == {"iterations": 2, "stopped_by": "until"}
    assert run.context["inner"] == {"iterations": 2, "stopped_by": "max_iterations"}


# -- pause, resume, cancel, signals ------------------------------------------------------------


def test_pause_stops_after_collecting_and_resume_rearms(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance()
    paused = flow.bq.workflows.pause("w1")
    assert paused.status is WorkflowStatus.PAUSED
    assert paused.advance_id == adv(1)  # the step in flight goes on
    assert flow.bq.workflows.pause("w1").status is WorkflowStatus.PAUSED  # idempotent
    flow.finish(task(1, "a"), {"rows": [7]})
    assert flow.advance(adv(1)) == "PAUSED"
    run = flow.run()
    assert run.context["a"] == {"rows": [7]}  # collected ...
    assert run.steps["a"].state == "SUCCEEDED"
    assert run.position == 1 and run.running == [] and run.advance_id is None
    assert [i for i, _ in flow.steps_sent()] == [task(1, "a")]  # ... and nothing started

    sent_before = len(flow.sent)
    resumed = flow.bq.workflows.resume("w1")
    assert resumed.status is WorkflowStatus.RUNNING
    assert resumed.advance_id == adv(2) and resumed.sequence == 2
    assert flow.ids()[sent_before:] == [adv(2)]  # re-armed, due now
    assert flow.run().advance_id == adv(2)
    assert flow.bq.workflows.resume("w1").advance_id == adv(2)  # a second resume: no-op
    assert flow.ids()[sent_before:] == [adv(2)]
    assert flow.advance() == "RUNNING"
    assert flow.steps_sent()[-1][0] == task(3, "b")
    assert flow.steps_sent()[-1][1]["payload"] == {"rows": [7], "fixed": 1}


def test_pause_while_running_then_resume_before_the_step_ends_keeps_the_advance(
    flow: Flow,
) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance()
    flow.bq.workflows.pause("w1")
    resumed = flow.bq.workflows.resume("w1")
    assert resumed.status is WorkflowStatus.RUNNING
    assert resumed.advance_id == adv(1)  # the parked advance carries on
    assert flow.advances_sent() == [adv(0)]
    flow.finish(task(1, "a"), {"rows": []})
    assert flow.advance(adv(1)) == "RUNNING"
    assert flow.steps_sent()[-1][0] == task(2, "b")


def test_resume_rearms_a_stalled_running_run(flow: Flow) -> None:
    # The advance the run names ended without moving it (only a crash does that).
    flow.start(two_steps(), {"n": 3})
    assert flow.bq.records.transition(adv(0), TaskState.FAILED, error="worker lost")
    run = flow.bq.workflows.resume("w1")
    assert run.status is WorkflowStatus.RUNNING
    assert run.advance_id == adv(1)
    assert flow.ids() == [adv(0), adv(1)]
    assert engine.advance(flow.bq, "w1", adv(0)) == "stale: RUNNING"
    assert flow.advance(adv(1)) == "RUNNING"
    assert [i for i, _ in flow.steps_sent()] == [task(2, "a")]


def test_resume_and_pause_refuse_an_ended_run(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.bq.workflows.cancel("w1")
    with pytest.raises(WorkflowError, match="cannot resume"):
        flow.bq.workflows.resume("w1")
    with pytest.raises(WorkflowError, match="cannot pause"):
        flow.bq.workflows.pause("w1")


@pytest.mark.parametrize("step_state", [TaskState.PENDING, TaskState.RUNNING])
def test_cancel_cancels_the_running_step_and_the_pending_advance(
    flow: Flow, step_state: TaskState
) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance()
    step_id = task(1, "a")
    if step_state is TaskState.RUNNING:
        assert flow.bq.records.transition(step_id, TaskState.RUNNING, started_at=time.time())
    run = flow.bq.workflows.cancel("w1")
    assert run.status is WorkflowStatus.CANCELLED
    assert run.error == "cancelled by request"
    assert run.advance_id is None
    assert run.steps["a"].state == "CANCELLED"
    assert flow.run().status is WorkflowStatus.CANCELLED
    assert flow.state(adv(1)) is TaskState.CANCELLED
    assert flow.bq.records.is_cancelled(step_id)
    if step_state is TaskState.PENDING:
        assert flow.state(step_id) is TaskState.CANCELLED
        assert flow.bq.info(step_id).error == "workflow w1 cancelled"
    else:  # a running task sees ctx.cancelled and stops itself
        assert flow.state(step_id) is TaskState.RUNNING
    assert engine.advance(flow.bq, "w1", adv(1)) == "stale: CANCELLED"
    assert flow.bq.workflows.cancel("w1").status is WorkflowStatus.CANCELLED  # as is
    assert [i for i, _ in flow.steps_sent()] == [step_id]


def test_set_vars_wakes_a_wait_on_vars(flow: Flow) -> None:
    flow.start(
        Workflow("gate")
        .wait(until="vars.go == true", name="gate")
        .step("after", "t.a", {"go": ref("vars.go"), "who": ref("vars.who")})
    )
    assert flow.advance(adv(0)) == "RUNNING"
    run = flow.run()
    assert run.steps["gate"].state == "WAITING" and run.current == "gate"
    assert run.advance_id is None  # no timer: only set_vars wakes it
    assert flow.ids() == [adv(0)]

    flow.bq.workflows.set_vars("w1", go=False, who="me")
    assert flow.ids() == [adv(0), adv(1)]
    assert flow.advance(adv(1)) == "RUNNING"
    assert flow.run().steps["gate"].state == "WAITING"  # not yet
    assert flow.steps_sent() == []

    run = flow.bq.workflows.set_vars("w1", go=True)
    assert run.context["vars"] == {"go": True, "who": "me"}
    assert flow.ids()[-1] == adv(2)
    assert flow.advance(adv(2)) == "RUNNING"
    run = flow.run()
    assert run.steps["gate"].state == "SUCCEEDED"
    assert [i for i, _ in flow.steps_sent()] == [task(3, "after")]
    assert flow.steps_sent()[0][1]["payload"] == {"go": True, "who": "me"}


def test_set_vars_while_a_step_runs_only_sets_them(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance()
    before = flow.ids()
    run = flow.bq.workflows.set_vars("w1", x=1)
    assert run.context["vars"] == {"x": 1}
    assert run.advance_id == adv(1)
    assert flow.ids() == before


def test_a_timed_wait_arms_a_delayed_advance(flow: Flow) -> None:
    flow.start(Workflow().wait(0.3, name="nap").step("after", "t.a"))
    started = time.time()
    assert flow.advance(adv(0)) == "RUNNING"
    run = flow.run()
    assert run.steps["nap"].state == "WAITING"
    assert run.wait_deadline == pytest.approx(started + 0.3, abs=0.1)
    assert run.advance_id == adv(1)
    assert flow.ids() == [adv(0)]  # not due yet: held
    assert flow.bq.delays.pending() == 1
    # woken early (a resume, a set_vars): it re-arms for what is left
    assert engine.advance(flow.bq, "w1", adv(1)) == "RUNNING"
    assert flow.run().advance_id == adv(2)
    assert flow.run().wait_deadline == run.wait_deadline
    time.sleep(max(0.0, run.wait_deadline - time.time()) + 0.05)
    assert flow.advance(adv(2)) == "RUNNING"
    run = flow.run()
    assert run.steps["nap"].state == "SUCCEEDED"
    assert run.wait_deadline is None
    assert [i for i, _ in flow.steps_sent()] == [task(3, "after")]


# -- crashes -----------------------------------------------------------------------------------


def crash_before_save(flow: Flow, token: str, workflow_id: str = "w1") -> None:
    """Run the advance `token`, then put the stored run back as it was: the advance
    submitted its tasks, then died before saving (its task will be delivered again)."""
    key = flow.bq.keys.workflow(workflow_id)
    before = flow.bq.redis.hget(key, "run")
    engine.advance(flow.bq, workflow_id, token)
    flow.bq.redis.hset(key, "run", before)


def test_an_advance_replayed_after_a_crash_runs_no_step_twice(flow: Flow) -> None:
    flow.start(Workflow("one").step("a", "t.a", {"n": ref("input.n")}), {"n": 1})
    crash_before_save(flow, adv(0))
    assert flow.ids() == [adv(0), task(1, "a")]
    assert flow.run().advance_id == adv(0)  # the save was lost

    flow.finish(task(1, "a"), {"ok": True})
    assert flow.ids()[-1] == adv(1)  # released by the step's end
    assert flow.advance(adv(1)) == "stale: RUNNING"  # the stored run still names A0
    assert flow.state(adv(1)) is TaskState.SUCCEEDED

    assert flow.advance(adv(0)) == "RUNNING"  # the redelivered A0
    run = flow.run()
    assert run.advance_id is not None and run.advance_id not in (adv(0), adv(1))
    assert run.advance_id == adv(2) and run.sequence == 2
    assert run.running == [task(1, "a")]
    counts = Counter(flow.ids())
    assert counts[task(1, "a")] == 1, "the step was submitted twice"
    assert counts[run.advance_id] == 1, "the new advance was not submitted"
    assert all(n == 1 for n in counts.values()), counts

    assert flow.advance(run.advance_id) == "SUCCEEDED"
    run = flow.run()
    assert run.status is WorkflowStatus.SUCCEEDED
    assert run.context["a"] == {"ok": True}
    assert run.steps["a"].runs == 1
    assert [i for i, _ in flow.steps_sent()] == [task(1, "a")]


def test_a_replay_before_the_next_advance_ran_keeps_it(flow: Flow) -> None:
    flow.start(Workflow("one").step("a", "t.a"))
    crash_before_save(flow, adv(0))
    assert flow.advance(adv(0)) == "RUNNING"  # A1 is still parked on the step
    run = flow.run()
    assert run.advance_id == adv(1)
    assert Counter(flow.ids()) == Counter([adv(0), task(1, "a")])
    flow.finish(task(1, "a"), 5)
    assert flow.advance(adv(1)) == "SUCCEEDED"
    assert flow.run().context["a"] == 5


def test_an_advance_replayed_twice_after_two_crashes_runs_no_step_twice(flow: Flow) -> None:
    # A0 crashes before saving, twice: its first replay already armed A2, which ran and
    # found itself stale; the second replay must arm yet another advance, not fail.
    flow.start(Workflow("one").step("a", "t.a"))
    crash_before_save(flow, adv(0))
    flow.finish(task(1, "a"), "x")
    assert flow.advance(adv(1)) == "stale: RUNNING"
    crash_before_save(flow, adv(0))  # the first replay: arms A2, then dies too
    assert flow.advance(adv(2)) == "stale: RUNNING"
    status = flow.advance(adv(0))  # the second replay
    run = flow.run()
    assert status == "RUNNING", run.error
    assert run.advance_id is not None
    assert flow.state(run.advance_id) in (TaskState.PENDING, TaskState.QUEUED)
    counts = Counter(flow.ids())
    assert counts[task(1, "a")] == 1 and counts[run.advance_id] == 1
    assert flow.advance(run.advance_id) == "SUCCEEDED"


# -- errors that stop a run -------------------------------------------------------------------


def test_a_resolved_payload_over_the_size_limit_fails_the_run(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance()
    limit = flow.bq.settings.max_payload_bytes
    flow.finish(task(1, "a"), {"rows": "x" * (limit + 10)})
    assert flow.advance() == "FAILED"
    run = flow.run()
    assert run.status is WorkflowStatus.FAILED
    assert run.error is not None and run.error.startswith("cannot go on:")
    assert f"the limit is {limit}" in run.error
    assert run.advance_id is None
    assert [i for i, _ in flow.steps_sent()] == [task(1, "a")]
    assert not flow.bq.records.exists(task(2, "b"))
    assert flow.bq.redis.ttl(flow.bq.keys.workflow("w1")) > 0  # kept as long as records
    assert [r.id for r in flow.bq.workflows.list(status="FAILED")] == ["w1"]


def test_a_handler_that_no_longer_resolves_fails_the_run(flow: Flow) -> None:
    flow.start(two_steps(), {"n": 3})
    flow.advance()
    flow.handlers.discard("t.b")  # its workers went away since the run started
    flow.finish(task(1, "a"), {"rows": []})
    assert flow.advance() == "FAILED"
    run = flow.run()
    assert run.status is WorkflowStatus.FAILED
    assert run.error is not None and "cannot go on" in run.error and "'t.b'" in run.error
    assert not flow.bq.records.exists(task(2, "b"))
    assert flow.advances_sent() == [adv(0), adv(1)]



def test_a_run_failed_by_a_submit_error_shows_no_step_in_flight(flow: Flow) -> None:
    # The failed submit created no task: the run must not name one as running, nor show
    # the step it could not start as RUNNING (as a step that failed is not).
    flow.start(two_steps(), {"n": 3})
    flow.advance()
    flow.handlers.discard("t.b")
    flow.finish(task(1, "a"), {"rows": []})
    assert flow.advance() == "FAILED"
    run = flow.run()
    assert not flow.bq.records.exists(task(2, "b"))
    assert run.running == [], f"names tasks that were never submitted: {run.running}"
    assert run.current is None
    assert run.steps.get("b") is None or run.steps["b"].state != "RUNNING"

def test_a_missing_field_in_a_condition_fails_the_run(flow: Flow) -> None:
    flow.start(Workflow().step("a", "t.a").when("a.score > 1", then=Step("b", "t.b"),
                                                name="pick"))
    flow.advance()
    flow.finish(task(1, "a"), {"other": 1})
    assert flow.advance() == "FAILED"
    run = flow.run()
    assert run.error is not None and run.error.startswith("at 'pick':")
    assert "a.score" in run.error
