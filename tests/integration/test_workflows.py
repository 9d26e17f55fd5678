"""Workflows on real workers: data between steps, branches, loops, waits, signals,
pause/resume, cancel, restarts, bad definitions, and the two pre-built workflows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bo_queue import (
    BOQueue,
    Objective,
    Range,
    Step,
    Strategy,
    TaskState,
    UnknownHandlerError,
    ValidationError,
    Workflow,
    WorkflowError,
    WorkflowStatus,
    ref,
)
from bo_queue.studies import FileStorage
from bo_queue.testing import wait_until
from bo_queue.workflows.prebuilt import evaluate_and_report, nightly_study
from tests.conftest import ROOT, Cluster, make_cluster


@pytest.fixture(scope="module")
def flow_cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=2, concurrency=2)
    yield c
    c.close()


@pytest.fixture
def bq(flow_cluster: Cluster) -> BOQueue:
    return flow_cluster.producer()


def key() -> str:
    return f"evidence:wf:{uuid.uuid4().hex}"


def test_branch_data_flow_and_a_loop_that_stops_at_its_limit(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    ticks, polls = key(), key()
    wf = (
        Workflow("branch-and-loop")
        .step("measure", "t.echo", {"score": ref("input.score")})
        .when("measure.score > 5",
              then=Step("high", "t.echo", {"got": ref("measure.score")}),
              otherwise=Step("low", "t.echo", {"got": ref("measure.score")}), name="pick")
        .loop("capped", Step("tick", "t.counter", {"key": ticks}),
              until="tick.n >= 100", max_iterations=3)
        .loop("early", Step("poll", "t.counter", {"key": polls}),
              until="poll.n >= 2", max_iterations=10)
    )
    run = bq.workflows.wait(bq.workflows.run(wf, {"score": 7}).id, timeout=60)
    assert run.status is WorkflowStatus.SUCCEEDED, run.error
    assert run.context["high"] == {"got": 7}
    assert run.context["pick"] == {"took": "then"}
    assert "low" not in run.steps  # the other branch never ran
    assert evidence.get(ticks) == "3"
    assert run.context["capped"] == {"iterations": 3, "stopped_by": "max_iterations"}
    assert evidence.get(polls) == "2"
    assert run.context["early"] == {"iterations": 2, "stopped_by": "until"}
    assert run.steps["tick"].runs == 3

    other = bq.workflows.wait(bq.workflows.run(wf, {"score": 2}).id, timeout=60)
    assert other.context["low"] == {"got": 2} and "high" not in other.steps


def test_parallel_steps_run_side_by_side_and_their_results_are_a_list(bq: BOQueue) -> None:
    wf = Workflow("fan-out").parallel("fan", [
        Step(f"part_{i}", "t.echo", {"i": i}) for i in range(4)
    ]).step("join", "t.echo", {"parts": ref("fan")})
    run = bq.workflows.wait(bq.workflows.run(wf).id, timeout=60)
    assert run.status is WorkflowStatus.SUCCEEDED
    assert run.context["join"] == {"parts": [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]}


def test_timed_wait_and_a_wait_on_a_signal(bq: BOQueue) -> None:
    wf = (
        Workflow("approval")
        .wait(seconds=1.0, name="cool_down")
        .wait(until="vars.approved == true", name="approval")
        .step("after", "t.echo", {"by": ref("vars.by")})
    )
    run = bq.workflows.run(wf)
    wait_until(lambda: bq.workflows.status(run.id).current == "approval", 20,
               what="the run to reach the approval wait")
    waited = bq.workflows.status(run.id)
    assert waited.steps["cool_down"].finished_at - waited.created_at.timestamp() >= 1.0
    assert waited.status is WorkflowStatus.RUNNING and "after" not in waited.steps
    bq.workflows.set_vars(run.id, approved=True, by="lab")
    done = bq.workflows.wait(run.id, timeout=30)
    assert done.status is WorkflowStatus.SUCCEEDED
    assert done.context["after"] == {"by": "lab"}


def test_wait_on_a_condition_times_out(bq: BOQueue) -> None:
    wf = Workflow("impatient").wait(until="vars.never exists", timeout_s=1.0, name="hold")
    run = bq.workflows.wait(bq.workflows.run(wf).id, timeout=30)
    assert run.status is WorkflowStatus.FAILED
    assert "wait 'hold' timed out after 1.0 s" in (run.error or "")


def test_pause_lets_the_running_step_finish_and_resume_goes_on(
    bq: BOQueue, evidence: redis.Redis
) -> None:
    gate = key()
    wf = Workflow("pausable").step("first", "t.gate", {"key": gate}).step("second", "t.echo")
    run = bq.workflows.run(wf)
    wait_until(lambda: evidence.exists(gate + ":entered"), 20, what="the first step to start")
    assert bq.workflows.pause(run.id).status is WorkflowStatus.PAUSED
    evidence.set(gate, 1)

    def settled() -> bool:  # the first step's result collected and the run idle
        now = bq.workflows.status(run.id)
        return now.steps["first"].state == "SUCCEEDED" and now.advance_id is None

    wait_until(settled, 20, what="the paused run to record its first step")
    paused = bq.workflows.status(run.id)
    assert paused.status is WorkflowStatus.PAUSED and "second" not in paused.steps
    bq.workflows.resume(run.id)
    done = bq.workflows.wait(run.id, timeout=30)
    assert done.status is WorkflowStatus.SUCCEEDED
    assert done.steps["second"].state == "SUCCEEDED"


def test_cancel_stops_the_run_with_no_step_left_running(bq: BOQueue) -> None:
    wf = (Workflow("doomed")
          .step("slow", "bo_queue.sleep", {"seconds": 60, "steps": 600})
          .step("never", "t.echo"))
    run = bq.workflows.run(wf)

    def slow_task_running() -> bool:
        ids = bq.workflows.status(run.id).running
        return bool(ids) and bq.info(ids[0]).state is TaskState.RUNNING

    wait_until(slow_task_running, 20, what="the slow step to run")
    slow_id = bq.workflows.status(run.id).running[0]
    cancelled = bq.workflows.cancel(run.id)
    assert cancelled.status is WorkflowStatus.CANCELLED
    wait_until(lambda: bq.info(slow_id).state.terminal, 15, what="the slow step to stop")
    assert bq.info(slow_id).state is TaskState.CANCELLED
    final = bq.workflows.status(run.id)
    assert final.status is WorkflowStatus.CANCELLED and "never" not in final.steps
    assert all(bq.info(i).state.terminal for i in bq.records.tagged(f"workflow:{run.id}"))
    with pytest.raises(WorkflowError, match="has ended"):
        bq.workflows.resume(run.id)


def test_a_failing_step_fails_the_run_with_the_reason(bq: BOQueue) -> None:
    wf = (Workflow("broken").step("boom", "t.node", {"log": key(), "fail": True})
          .step("never", "t.echo"))
    run = bq.workflows.wait(bq.workflows.run(wf).id, timeout=30)
    assert run.status is WorkflowStatus.FAILED
    assert "step 'boom' FAILED" in (run.error or "") and "fails as asked" in (run.error or "")
    assert "never" not in run.steps


def test_bad_definitions_get_clear_errors(bq: BOQueue) -> None:
    with pytest.raises(UnknownHandlerError, match=r"no\.such\.handler"):
        bq.workflows.run(Workflow("x").step("a", "no.such.handler"))
    with pytest.raises(ValidationError, match="needs max_iterations"):
        Workflow("x").loop("l", Step("a", "t.echo"), until="a.done == true")
    with pytest.raises(ValidationError, match="no earlier step is named 'later'"):
        Workflow("x").when("later.ok == true", then=Step("a", "t.echo")).step(
            "later", "t.echo").spec()
    with pytest.raises(ValidationError, match="two steps are named 'a'"):
        Workflow("x").step("a", "t.echo").step("a", "t.echo").spec()
    with pytest.raises(ValidationError, match="was not given: threshold"):
        bq.workflows.run(Workflow("x").step("a", "t.echo", {"t": ref("input.threshold")}))
    with pytest.raises(ValidationError, match="bad condition"):
        Workflow("x").when("a.b ~ 3", then=Step("a", "t.echo"))
    # A field no step produces is only knowable at run: the run fails and says which.
    run = bq.workflows.run(Workflow("y").step("measure", "t.echo", {"v": 1})
                           .when("measure.missing > 0", then=Step("b", "t.echo")))
    failed = bq.workflows.wait(run.id, timeout=30)
    assert failed.status is WorkflowStatus.FAILED
    assert "no field 'measure.missing'" in (failed.error or "")


def test_runs_survive_a_restart_of_every_worker_and_the_producer(redis_url: str) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=1)
    try:
        producer = cluster.producer()
        wf = (Workflow("restartable").step("one", "t.echo", {"n": 1})
              .wait(seconds=3.0, name="nap").step("two", "t.echo", {"n": ref("one.n")}))
        run = producer.workflows.run(wf)
        wait_until(lambda: producer.workflows.status(run.id).current == "nap", 20,
                   what="the run to reach its wait")
        cluster.workers[0].stop()
        producer.close()
        cluster.bq = None
        cluster.add_worker(1)
        fresh = cluster.producer()
        done = fresh.workflows.wait(run.id, timeout=60)
        assert done.status is WorkflowStatus.SUCCEEDED
        assert done.context["two"] == {"n": 1}
    finally:
        cluster.close()


# -- the pre-built workflows (need study steps: the `bo` queue, and Ax) ----------------------

@pytest.fixture(scope="module")
def study_flow_cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=2, queues=("default", "bo", "evaluate"))
    yield c
    c.close()


def small_study(bq: BOQueue, trials: int) -> dict[str, object]:
    return {
        "name": "wf-study", "parameters": [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)],
        "objectives": [Objective("loss", minimize=True)],
        "strategy": Strategy(initial_trials=trials, max_trials=trials, seed=0),
    }


@pytest.mark.timeout(300)
def test_evaluate_a_batch_then_report_it_to_the_study(study_flow_cluster: Cluster) -> None:
    bq = study_flow_cluster.producer()
    study = bq.studies.create(**small_study(bq, 10))  # type: ignore[arg-type]
    points = [{"x": 0.3, "y": 0.3}, {"x": 0.0, "y": 1.0}, {"x": 1.0, "y": 0.5}]
    run = bq.workflows.run(evaluate_and_report(study.id, points, "t.bowl"))
    done = bq.workflows.wait(run.id, timeout=240)
    assert done.status is WorkflowStatus.SUCCEEDED, done.error
    assert done.context["report"] == 3  # accepted; the study's next step records them
    wait_until(lambda: bq.studies.get(study.id).completed_trials == 3, 60,
               what="the study to record the three results")
    trials = sorted(bq.studies.trials(study.id), key=lambda t: t.index)
    assert [t.params for t in trials] == points
    losses = [t.values["loss"] for t in trials]  # type: ignore[index]
    assert losses == pytest.approx([0.0, 0.09 + 0.49, 0.49 + 0.04])


@pytest.mark.timeout(300)
def test_nightly_runs_the_study_then_exports_and_archives_it(
    study_flow_cluster: Cluster, tmp_path: Path
) -> None:
    bq = study_flow_cluster.producer()
    template = {**small_study(bq, 3), "evaluator": "t.quadratic"}
    spec = bq.studies.create(**template).spec.model_dump(mode="json")  # type: ignore[arg-type]
    wf = nightly_study(spec, str(tmp_path / "exports"), str(tmp_path / "archive"), poll_s=0.5)
    # What a schedule would fire: the definition as JSON, started by a built-in handler.
    starter = bq.submit("bo_queue.workflow.start", {"workflow": wf.spec().model_dump(mode="json")})
    run_id = starter.get(timeout=30)
    done = bq.workflows.wait(run_id, timeout=240)
    assert done.status is WorkflowStatus.SUCCEEDED, done.error
    study_id = done.context["start"]["study_id"]
    assert done.context["check"]["status"] == "COMPLETED"
    exported = json.loads(Path(done.context["export"]["path"]).read_text())
    assert len(exported["trials"]) == 3
    assert FileStorage(tmp_path / "archive").load(study_id).study.id == study_id
    with pytest.raises(Exception, match=study_id):
        bq.studies.get(study_id)  # moved out of Redis


def test_command_line_runs_and_inspects_workflows_and_graphs(
    flow_cluster: Cluster, tmp_path: Path
) -> None:
    bq = flow_cluster.producer()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": flow_cluster.redis_url,
               "BO_QUEUE_NAMESPACE": flow_cluster.namespace}
        return subprocess.run([sys.executable, "-m", "bo_queue.cli", *args],
                              capture_output=True, text=True, timeout=120, env=env)

    definition = tmp_path / "wf.json"
    spec = Workflow("cli").step("a", "t.echo", {"n": ref("input.n")}).spec()
    definition.write_text(spec.model_dump_json())
    out = cli("workflow", "run", str(definition), "--inputs", '{"n": 3}', "--wait")
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[0]
    assert bq.workflows.status(run_id).context["a"] == {"n": 3}
    status = cli("workflow", "status", run_id)
    assert "SUCCEEDED" in status.stdout and "a " in status.stdout
    assert cli("workflow", "pause", run_id).returncode == 2  # it has ended: a clear error

    a = bq.submit("t.node", {"log": key()})
    b = bq.submit("t.node", {"log": key()}, depends_on=[a])
    b.get(timeout=30)
    dot = cli("task", "graph", b.id, "--dot")
    assert dot.returncode == 0 and f'"{a.id}" -> "{b.id}";' in dot.stdout
    layers = cli("task", "graph", a.id)
    assert layers.stdout.splitlines()[0].startswith(f"0: {a.id} (t.node, SUCCEEDED)")
