"""The rest of the facade over HTTP, through a real `bo-queue api` process and real
workers: workflow runs (start, status, definition, list, pause, resume, vars, cancel,
wait), lineage and dependencies (children, tree, graph, plan), a study's configuration,
design points, batched results and fail, and the study dashboard's task and namespace
fields. Bad input is a 4xx with the API's error body, and nothing is written."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bo_queue import Step, Workflow, ref
from bo_queue.api.keys import ApiKeys
from bo_queue.studies.models import Objective, Range, Strategy, StudySpec
from bo_queue.testing import wait_until
from tests.conftest import STUDY_QUEUES, new_namespace
from tests.integration.api_server import ApiServer
from tests.integration.test_api import problem, wait_result

CLUSTER = {"workers": 1, "queues": STUDY_QUEUES}  # tests/conftest.py's `cluster`


@pytest.fixture(scope="module")
def other(api: ApiServer, keys: ApiKeys) -> Iterator[httpx.Client]:
    """A producer of another namespace, through the same API."""
    key = keys.create(new_namespace(), name="other")
    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}, timeout=30) as c:
        yield c


def run_ids(client: httpx.Client) -> list[str]:
    response = client.get("/workflows", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [run["id"] for run in response.json()]


def approval_flow(name: str) -> dict[str, Any]:
    """A step, a wait on vars.approved, then a step that reads the vars."""
    return (
        Workflow(name)
        .step("first", "t.echo", {"n": ref("input.n")})
        .wait(until="vars.approved == true", name="approval")
        .step("last", "t.echo", {"by": ref("vars.by"), "n": ref("first.n")})
        .spec().model_dump(mode="json")
    )


# -- workflows -------------------------------------------------------------------------


def test_workflow_run_status_definition_list_and_wait(client: httpx.Client) -> None:
    definition = (
        Workflow("http-etl")
        .step("extract", "t.echo", {"rows": ref("input.rows")})
        .parallel("transform", [Step("clean", "t.echo", {"rows": ref("extract.rows")}),
                                Step("stats", "t.echo", {"count": 2})])
        .when("extract.rows > 5", then=Step("big", "t.echo", {"size": "big"}),
              otherwise=Step("small", "t.echo", {"size": "small"}), name="size")
        .spec().model_dump(mode="json")
    )
    run_id = f"http-etl-{uuid.uuid4().hex[:8]}"
    started = client.post("/workflows", json={"definition": definition, "inputs": {"rows": 9},
                                              "id": run_id})
    assert started.status_code == 201, started.text
    assert started.json()["id"] == run_id and started.json()["name"] == "http-etl"
    assert started.json()["status"] in ("RUNNING", "SUCCEEDED")

    done = client.post(f"/workflows/{run_id}/wait", params={"timeout": 50})
    assert done.status_code == 200, done.text
    run = done.json()
    assert run["status"] == "SUCCEEDED", run["error"]
    assert run["context"]["input"] == {"rows": 9}
    assert run["context"]["transform"] == [{"rows": 9}, {"count": 2}]
    assert run["context"]["big"] == {"size": "big"} and "small" not in run["steps"]
    assert run["steps"]["extract"]["state"] == "SUCCEEDED"
    assert client.get(f"/workflows/{run_id}").json() == run

    # the definition comes back as it was sent (the stored, checked spec)
    stored = client.get(f"/workflows/{run_id}/definition")
    assert stored.status_code == 200 and stored.json() == definition
    assert run_id in run_ids(client)
    succeeded = client.get("/workflows", params={"status": "SUCCEEDED"}).json()
    assert run_id in [r["id"] for r in succeeded]
    assert run_id not in [r["id"] for r in client.get(
        "/workflows", params={"status": "RUNNING"}).json()]
    # an ended run: pause and resume are a conflict, cancel returns it as it is
    problem(client.post(f"/workflows/{run_id}/pause"), 409, "WorkflowError")
    problem(client.post(f"/workflows/{run_id}/resume"), 409, "WorkflowError")
    assert client.post(f"/workflows/{run_id}/cancel").json()["status"] == "SUCCEEDED"


def test_workflow_pause_resume_vars_and_cancel(client: httpx.Client) -> None:
    started = client.post("/workflows", json={"definition": approval_flow("http-approval"),
                                              "inputs": {"n": 4}})
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]

    def waiting() -> bool:
        steps = client.get(f"/workflows/{run_id}").json()["steps"]
        return steps.get("approval", {}).get("state") == "WAITING"

    wait_until(waiting, 30, what="the run to wait for approval")
    problem(client.post(f"/workflows/{run_id}/wait", params={"timeout": 0.3}), 504,
            "WorkflowTimeoutError")
    assert client.post(f"/workflows/{run_id}/pause").json()["status"] == "PAUSED"
    assert client.post(f"/workflows/{run_id}/pause").json()["status"] == "PAUSED"
    assert client.post(f"/workflows/{run_id}/resume").json()["status"] == "RUNNING"

    # vars may use any key, the run's own parameter name included
    signalled = client.patch(f"/workflows/{run_id}/vars",
                             json={"approved": True, "by": "ops", "workflow_id": "x"})
    assert signalled.status_code == 200, signalled.text
    assert signalled.json()["context"]["vars"] == {"approved": True, "by": "ops",
                                                   "workflow_id": "x"}
    run = client.post(f"/workflows/{run_id}/wait", params={"timeout": 50}).json()
    assert run["status"] == "SUCCEEDED", run["error"]
    assert run["context"]["last"] == {"by": "ops", "n": 4}

    # cancelled while it waits: nothing more starts, and it cannot be resumed
    held = client.post("/workflows", json={"definition": approval_flow("http-cancel"),
                                           "inputs": {"n": 1}}).json()
    wait_until(lambda: client.get(f"/workflows/{held['id']}").json()["steps"]
               .get("approval", {}).get("state") == "WAITING", 30,
               what="the second run to wait")
    cancelled = client.post(f"/workflows/{held['id']}/cancel", params={"terminate": "true"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["steps"]["approval"]["state"] == "CANCELLED"
    problem(client.post(f"/workflows/{held['id']}/resume"), 409, "WorkflowError")
    ended = client.post(f"/workflows/{held['id']}/wait", params={"timeout": 5}).json()
    assert ended["status"] == "CANCELLED" and "last" not in ended["steps"]


def test_bad_workflow_requests_start_nothing(client: httpx.Client, other: httpx.Client
                                            ) -> None:
    good = approval_flow("http-bad")
    before = run_ids(client)
    taken = f"taken-{uuid.uuid4().hex[:8]}"
    first = client.post("/workflows", json={"definition": good, "inputs": {"n": 1},
                                            "id": taken})
    assert first.status_code == 201, first.text

    unknown = {**good, "steps": [{"kind": "step", "name": "s", "handler": "no.such"}]}
    duplicate = {**good, "steps": [good["steps"][0], good["steps"][0]]}
    reads_later = {**good, "steps": [
        {"kind": "step", "name": "s", "handler": "t.echo", "payload": {"v": {"$ctx": "t.x"}}},
        {"kind": "step", "name": "t", "handler": "t.echo"}]}
    bad_kind = {**good, "steps": [{"kind": "teleport", "name": "s"}]}
    for body, error, words in (
        ({"definition": unknown}, "UnknownHandlerError", "no.such"),
        ({"definition": good}, "ValidationError", "inputs it was not given: n"),
        ({"definition": duplicate, "inputs": {"n": 1}}, "ValidationError", "unique"),
        ({"definition": reads_later}, "ValidationError", "no earlier step"),
        ({"definition": bad_kind}, "ValidationError", "'teleport'"),
        ({"definition": {"name": "empty", "steps": []}}, "ValidationError",
         "at least 1 item"),
        ({"definition": good, "inputs": {"n": 1}, "id": "bad id!"}, "ValidationError",
         "body.id"),
        ({"definition": good, "inputs": {"n": 1}, "id": taken}, "ValidationError", "exists"),
        ({"definition": good, "inputs": {"n": 1}, "extra": 1}, "ValidationError",
         "body.extra"),
        ({"definition": good, "inputs": {"n": "x" * 1_100_000}}, "ValidationError", "limit"),
    ):
        detail = problem(client.post("/workflows", json=body), 422, error)
        assert words in detail, detail
    assert sorted(run_ids(client)) == sorted([*before, taken])  # only the good one started

    missing = "no-such-run"
    for method, path in (("GET", ""), ("GET", "/definition"), ("POST", "/pause"),
                         ("POST", "/resume"), ("POST", "/cancel"), ("POST", "/wait")):
        problem(client.request(method, f"/workflows/{missing}{path}"), 404,
                "WorkflowNotFoundError")
    problem(client.patch(f"/workflows/{missing}/vars", json={"a": 1}), 404)
    assert "body" in problem(client.patch(f"/workflows/{taken}/vars", json=[1, 2]), 422)
    problem(client.patch(f"/workflows/{taken}/vars", json={"big": "x" * 1_100_000}), 422)
    assert client.get(f"/workflows/{taken}").json()["context"]["vars"] == {}
    assert "query.status" in problem(client.get("/workflows", params={"status": "DONE"}), 422)
    assert "query.timeout" in problem(client.post(f"/workflows/{taken}/wait",
                                                  params={"timeout": 0}), 422)
    # another namespace cannot see, change or even learn of the run
    for method, path in (("GET", ""), ("GET", "/definition"), ("POST", "/pause"),
                         ("POST", "/cancel")):
        problem(other.request(method, f"/workflows/{taken}{path}"), 404)
    problem(other.patch(f"/workflows/{taken}/vars", json={"approved": True}), 404)
    assert taken not in run_ids(other)
    assert client.post(f"/workflows/{taken}/cancel").json()["status"] == "CANCELLED"


# -- lineage and dependencies ----------------------------------------------------------


def test_children_tree_graph_and_plan(client: httpx.Client, other: httpx.Client) -> None:
    parent = client.post("/tasks", json={"handler": "t.spawner", "payload": {"children": 2}})
    assert parent.status_code == 201, parent.text
    parent_id = parent.json()["id"]
    spawned = wait_result(client, parent_id).json()["result"]
    children = client.get(f"/tasks/{parent_id}/children")
    assert children.status_code == 200, children.text
    assert sorted(c["id"] for c in children.json()) == sorted(spawned)
    assert {c["parent_id"] for c in children.json()} == {parent_id}
    tree = client.get(f"/tasks/{parent_id}/tree").json()
    assert tree["task"]["id"] == parent_id
    assert sorted(c["task"]["id"] for c in tree["children"]) == sorted(spawned)
    assert client.get(f"/tasks/{parent_id}/tree", params={"max_depth": 0}).json()[
        "children"] == []

    a, b, c, d = (f"dag-{x}-{uuid.uuid4().hex[:6]}" for x in "abcd")
    batch = client.post("/tasks/batch", json=[
        {"id": a, "handler": "t.echo"},
        {"id": b, "handler": "t.echo", "depends_on": [a]},
        {"id": c, "handler": "t.echo", "depends_on": [a]},
        {"id": d, "handler": "t.echo", "depends_on": [b, c]},
    ])
    assert batch.status_code == 201, batch.text
    graph = client.get("/graph", params={"ids": [d]})
    assert graph.status_code == 200, graph.text
    body = graph.json()
    assert {n["id"] for n in body["nodes"]} == {a, b, c, d}
    assert {n["handler"] for n in body["nodes"]} == {"t.echo"}
    assert sorted(map(tuple, body["edges"])) == sorted([(a, b), (a, c), (b, d), (c, d)])
    assert [sorted(layer) for layer in body["layers"]] == [[a], sorted([b, c]), [d]]
    assert body["dot"].startswith("digraph") and f'"{a}" -> "{b}"' in body["dot"]
    plan = client.get("/plan", params={"ids": [d, c, b, a]})
    assert [sorted(layer) for layer in plan.json()] == [[a], sorted([b, c]), [d]]
    assert client.get("/plan", params={"ids": [b, c]}).json() == [[b, c]]  # among themselves

    problem(client.get("/graph", params={"ids": [a, "no-such-task"]}), 404,
            "UnknownTaskError")
    problem(client.get("/plan", params={"ids": ["no-such-task"]}), 404, "UnknownTaskError")
    assert "query.ids" in problem(client.get("/graph"), 422)
    assert "query.max_depth" in problem(client.get(f"/tasks/{parent_id}/tree",
                                                   params={"max_depth": 99}), 422)
    for path in (f"/tasks/{parent_id}/children", f"/tasks/{parent_id}/tree"):
        problem(client.get(path.replace(parent_id, "no-such-task")), 404, "UnknownTaskError")
        problem(other.get(path), 404, "UnknownTaskError")
    problem(other.get("/graph", params={"ids": [d]}), 404)


# -- studies ---------------------------------------------------------------------------

SPEC = StudySpec(
    name="http-configure",
    parameters=[Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)],
    objectives=[Objective("loss", minimize=True)],
    strategy=Strategy(initial_trials=4, max_trials=10, seed=0),
)


def test_study_space_strategy_design_points_results_and_fail(client: httpx.Client) -> None:
    study_id = client.post("/studies", json=SPEC.model_dump(mode="json")).json()["id"]
    space = {"parameters": [*SPEC.model_dump(mode="json")["parameters"],
                            {"kind": "range", "name": "z", "low": -1.0, "high": 1.0}],
             "parameter_constraints": [{"coefficients": {"x": 1.0, "y": 1.0}, "bound": 1.5}]}
    changed = client.put(f"/studies/{study_id}/parameter-space", json=space)
    assert changed.status_code == 200, changed.text
    assert [p["name"] for p in changed.json()["spec"]["parameters"]] == ["x", "y", "z"]
    strategy = {"initial_trials": 3, "max_trials": 8, "seed": 7}
    changed = client.put(f"/studies/{study_id}/strategy", json=strategy)
    assert changed.status_code == 200, changed.text
    assert changed.json()["spec"]["strategy"]["max_trials"] == 8

    configured = client.get(f"/studies/{study_id}").json()
    for path, body in (
        ("parameter-space", {"parameters": []}),
        ("parameter-space", {**space, "parameter_constraints": [
            {"coefficients": {"w": 1.0}, "bound": 1.0}]}),
        ("strategy", {"initial_trials": 9, "max_trials": 2}),
        ("strategy", {"max_trials": 0}),
        ("strategy", {"nonsense": 1}),
    ):
        problem(client.put(f"/studies/{study_id}/{path}", json=body), 422, "ValidationError")
    assert client.get(f"/studies/{study_id}").json() == configured  # nothing written

    points = [{"x": 0.1, "y": 0.2, "z": 0.0}, {"x": 0.5, "y": 0.5, "z": -0.5},
              {"x": 0.9, "y": 0.1, "z": 0.9}]
    made = client.post(f"/studies/{study_id}/design-points", json={"points": points})
    assert made.status_code == 200, made.text
    trials = made.json()
    assert [t["params"] for t in trials] == points
    assert {t["status"] for t in trials} == {"RUNNING"}
    for bad in ([{"x": 2.0, "y": 0.2, "z": 0.0}], [{"x": 0.9, "y": 0.9, "z": 0.0}],
                [{"x": 0.1}], []):
        problem(client.post(f"/studies/{study_id}/design-points", json={"points": bad}), 422)
    assert len(client.get(f"/studies/{study_id}/trials").json()) == 3  # no trial made

    first, second, third = (t["index"] for t in trials)
    for bad, status in (
        ([{"index": first, "values": {"loss": 0.1}}, {"index": 99, "values": {"loss": 1.0}}],
         404),
        ([{"index": first, "values": {"loss": 0.1}}, {"index": second, "values": {}}], 422),
        ([{"index": first, "values": {"loss": "low"}}], 422),
        ([{"index": -1, "values": {"loss": 0.1}}], 422),
        ([], 422),
    ):
        problem(client.post(f"/studies/{study_id}/results", json={"results": bad}), status)
    assert {t["status"] for t in client.get(f"/studies/{study_id}/trials").json()} == {
        "RUNNING"}  # no result recorded

    told = client.post(f"/studies/{study_id}/results", json={"results": [
        {"index": first, "values": {"loss": 0.1}},
        {"index": second, "values": {"loss": [0.4, 0.01]}}]})
    assert told.status_code == 200, told.text
    assert told.json() == {"study_id": study_id, "recorded": 2}
    again = client.post(f"/studies/{study_id}/results", json={"results": [
        {"index": first, "values": {"loss": 0.1}}]})
    assert again.json()["recorded"] == 0  # a repeat is a no-op
    problem(client.post(f"/studies/{study_id}/results", json={"results": [
        {"index": first, "values": {"loss": 0.7}}]}), 409, "ReportConflictError")

    def completed() -> dict[int, Any]:  # the study step on a worker tells Ax, then them
        trials = client.get(f"/studies/{study_id}/trials", params={"status": "COMPLETED"})
        return {t["index"]: t["values"]["loss"] for t in trials.json()}

    wait_until(lambda: len(completed()) == 2, 30, what="the two trials to complete")
    assert completed() == {first: 0.1, second: [0.4, 0.01]}

    # started: the space and strategy are fixed
    problem(client.put(f"/studies/{study_id}/strategy", json=strategy), 409,
            "InvalidTransitionError")
    problem(client.put(f"/studies/{study_id}/parameter-space", json=space), 409,
            "InvalidTransitionError")
    assert "body.reason" in problem(client.post(f"/studies/{study_id}/fail", json={}), 422)
    failed = client.post(f"/studies/{study_id}/fail", json={"reason": "rig broke"})
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == "FAILED" and failed.json()["message"] == "rig broke"
    problem(client.post(f"/studies/{study_id}/fail", json={"reason": "again"}), 409,
            "InvalidTransitionError")
    problem(client.post(f"/studies/{study_id}/design-points", json={"points": points[:1]}),
            409)
    assert client.get(f"/studies/{study_id}/trials/{third}").json()["status"] != "COMPLETED"
    for path in ("design-points", "results", "fail"):
        problem(client.post(f"/studies/no-such-study/{path}", json={
            "points": points[:1], "results": [{"index": 0, "values": {"loss": 1}}],
            "reason": "x"}), 422)  # extra fields: each body is strict
    problem(client.post("/studies/no-such-study/fail", json={"reason": "x"}), 404,
            "StudyNotFoundError")
    problem(client.put("/studies/no-such-study/strategy", json=strategy), 404)


@pytest.mark.timeout(180)
def test_dashboard_shows_evaluation_tasks_and_namespace_metadata(client: httpx.Client
                                                                 ) -> None:
    assert client.patch("/metadata", json={"project": "wings", "rev": 3}).status_code == 200
    spec = SPEC.model_copy(update={
        "name": "http-dashboard", "evaluator": "t.bowl",
        "strategy": Strategy(initial_trials=2, max_trials=2, parallelism=2, seed=1)})
    study_id = client.post("/studies", json=spec.model_dump(mode="json")).json()["id"]
    assert client.post(f"/studies/{study_id}/run").status_code == 200
    wait_until(lambda: client.get(f"/studies/{study_id}").json()["status"] == "COMPLETED",
               120, 0.2, what="the closed loop to complete")

    data = client.get(f"/studies/{study_id}/dashboard/data").json()
    assert data["namespace"]["metadata"]["project"] == "wings"
    assert data["namespace"]["metadata"]["rev"] == 3
    tasks = {t["index"]: t["task"] for t in data["trials"]}
    assert sorted(tasks) == [0, 1]
    for index, task in tasks.items():
        assert task["name"] == f"trial {index}" and task["state"] == "SUCCEEDED"
        assert task["description"] == "study http-dashboard"
        assert task["metadata"] == {"study_id": study_id, "trial_index": index}
        assert task["created_by"] is None  # submitted by the study's step, on a worker
        record = client.get(f"/tasks/{task['id']}").json()
        assert (record["name"], record["metadata"]) == (task["name"], task["metadata"])
    listed = client.get("/tasks", params={"metadata": f'{{"study_id": "{study_id}"}}'})
    assert sorted(t["id"] for t in listed.json()) == sorted(t["id"] for t in tasks.values())

    page = client.get(f"/studies/{study_id}/dashboard").text
    assert '<div id="namespace"' in page
    assert '<span data-key="project">project=wings</span>' in page
    assert '<span data-key="rev">rev=3</span>' in page
    for index, task in tasks.items():
        assert (f'data-task-id="{task["id"]}" data-state="SUCCEEDED">trial {index}</td>'
                f'<td class="text">study http-dashboard</td>'
                f'<td class="text">study_id={study_id}, trial_index={index}</td>') in page
    fragment = client.get(f"/studies/{study_id}/dashboard/fragment").text
    assert "trial 0</td>" in fragment and 'id="namespace"' not in fragment  # polled: lean
    # an ask/tell study's trials have no task: its table has no task columns
    asked = client.post("/studies", json=SPEC.model_dump(mode="json")).json()["id"]
    assert '<th class="text">task</th>' not in client.get(
        f"/studies/{asked}/dashboard").text
    # the index (served by `bo-queue api` too) lists both, with their status
    index = client.get("/dashboard").text
    rows = dict(re.findall(r'<tr data-study-id="([^"]+)" data-status="([A-Z]+)">', index))
    assert rows[study_id] == "COMPLETED" and rows[asked] == "CREATED"
