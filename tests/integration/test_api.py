"""The HTTP API as a real `bo-queue api` process, against real workers: tasks, the whole
ask/tell cycle of a study, schedules, monitoring, health, API keys and namespaces,
request limits and error bodies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from bo_queue.api.keys import ApiKeys, digest
from bo_queue.studies.models import Objective, Range, Strategy, StudySpec
from bo_queue.testing import wait_until
from tests.conftest import ROOT, Cluster, new_namespace
from tests.integration.api_server import ApiServer

QUEUES = ("default", "bo", "evaluate")
# The API's own payload limit (the workers keep the default): bodies over it plus the
# margin (bo_queue.api.app.BODY_MARGIN, 64 KiB) are 413 before anything reads them.
MAX_PAYLOAD = 100_000


CLUSTER = {"workers": 1, "queues": QUEUES}  # tests/conftest.py's `cluster`
API_ENV = {"BO_QUEUE_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD)}  # tests/integration/conftest.py's `api`


@pytest.fixture(scope="module")
def client_b(api: ApiServer, keys: ApiKeys) -> Iterator[httpx.Client]:
    """A producer of another namespace (B), through the same API."""
    key = keys.create(new_namespace(), name="producer-b")
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as client:
        yield client


def problem(response: httpx.Response, status: int, error: str | None = None) -> str:
    """Check an error answer: the status, the {"error", "detail"} shape, no traceback;
    return the detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    if error is not None:
        assert body["error"] == error, body
    for marker in ("Traceback", 'File "', "site-packages", ".py\", line"):
        assert marker not in response.text, response.text
    return str(body["detail"])


def wait_result(client: httpx.Client, task_id: str, timeout: float = 30) -> httpx.Response:
    """Poll GET /tasks/{id}/result while it answers 202."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/tasks/{task_id}/result")
        if response.status_code != 202:
            return response
        assert response.json()["result"] is None
        assert time.monotonic() < deadline, f"task {task_id} still {response.json()['state']}"
        time.sleep(0.05)


def test_docs_and_schema_are_served(api: ApiServer) -> None:
    schema = httpx.get(api.url + "/openapi.json").json()
    for path in ("/tasks", "/tasks/batch", "/tasks/{task_id}/result", "/studies",
                 "/studies/{study_id}/suggest", "/studies/{study_id}/trials/{index}/report",
                 "/schedules", "/monitor/metrics", "/health"):
        assert path in schema["paths"], path
    # the facade's own models are the request and response types
    components = schema["components"]["schemas"]
    assert {"TaskRequest", "TaskInfo", "StudySpec", "Study", "Trial", "ScheduleInfo",
            "QueueStats", "WorkerStatus", "Metrics", "HealthReport", "ErrorBody"} <= set(
        components)
    assert "X-API-Key" in json.dumps(schema["components"]["securitySchemes"])
    docs = httpx.get(api.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_requests_without_a_valid_key_are_401(api: ApiServer, cluster: Cluster,
                                              keys: ApiKeys) -> None:
    for headers in ({}, {"X-API-Key": "boq_not-a-key"}, {"Authorization": "Bearer nope"}):
        for method, path in (("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/studies"),
                             ("GET", "/studies/abc"), ("GET", "/monitor/queues"),
                             ("GET", "/schedules")):
            response = httpx.request(method, api.url + path, headers=headers,
                                     json={"handler": "t.echo"})
            problem(response, 401, "Unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
    # a revoked key stops working at once
    key = keys.create(cluster.namespace, name="short-lived")
    assert httpx.get(api.url + "/tasks", headers={"X-API-Key": key}).status_code == 200
    assert keys.revoke(key)
    problem(httpx.get(api.url + "/tasks", headers={"X-API-Key": key}), 401)


def test_api_key_commands(redis_url: str, api: ApiServer, cluster: Cluster) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bo_queue.cli", "api-key", *args],
                              capture_output=True, text=True, timeout=60, env=env)

    created = cli("create", cluster.namespace, "--name", "cli-made")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("boq_") and "not shown again" in created.stderr
    assert httpx.get(api.url + "/tasks", headers={"X-API-Key": key}).status_code == 200
    listed = cli("list")
    line = next(x for x in listed.stdout.splitlines() if "cli-made" in x)
    assert key not in listed.stdout  # only digests' prefixes are ever shown
    key_id, namespace = line.split()[:2]
    assert namespace == cluster.namespace
    assert cli("revoke", key_id).returncode == 0
    assert httpx.get(api.url + "/tasks", headers={"X-API-Key": key}).status_code == 401
    again = cli("revoke", key_id)
    assert again.returncode == 2 and "no API key matches" in again.stderr
    bad = cli("create", "Not A Namespace!")
    assert bad.returncode == 2 and "namespace" in bad.stderr


def test_task_submit_get_result_and_list(client: httpx.Client, evidence: redis.Redis
                                         ) -> None:
    created = client.post("/tasks", json={"handler": "t.echo", "payload": {"n": 1},
                                          "priority": "high", "tags": ["api-echo"]})
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["handler"] == "t.echo" and info["priority"] == 2
    assert info["tags"] == ["api-echo"]
    done = wait_result(client, info["id"])
    assert done.status_code == 200
    assert done.json() == {"id": info["id"], "state": "SUCCEEDED", "result": {"n": 1}}
    record = client.get(f"/tasks/{info['id']}").json()
    assert record["state"] == "SUCCEEDED" and record["attempts"] == 1

    # 202 while it runs: a task that holds its worker until a key exists
    gate = f"evidence:api-gate:{uuid.uuid4().hex}"
    held = client.post("/tasks", json={"handler": "t.gate", "payload": {"key": gate}}).json()
    pending = client.get(f"/tasks/{held['id']}/result")
    assert pending.status_code == 202
    assert pending.json()["state"] in ("QUEUED", "RUNNING")
    evidence.set(gate, 1)
    assert wait_result(client, held["id"]).json()["result"] == "opened"

    # a batch: all or nothing, with a dependency inside it
    first = f"api-batch-{uuid.uuid4().hex[:8]}"
    batch = client.post("/tasks/batch", json=[
        {"handler": "t.echo", "id": first, "payload": {"step": 1}},
        {"handler": "t.echo", "payload": {"step": 2}, "depends_on": [first]},
    ])
    assert batch.status_code == 201, batch.text
    head, tail = batch.json()
    assert head["id"] == first and tail["depends_on"] == [first]
    assert wait_result(client, tail["id"]).json()["result"] == {"step": 2}
    rejected = client.post("/tasks/batch", json=[{"handler": "t.echo"},
                                                 {"handler": "no.such"}])
    assert "request 1" in problem(rejected, 422, "UnknownHandlerError")

    listed = client.get("/tasks", params={"tag": "api-echo", "state": "SUCCEEDED"}).json()
    assert [t["id"] for t in listed] == [info["id"]]
    by_handler = client.get("/tasks", params={"handler": "t.gate", "limit": 5}).json()
    assert held["id"] in [t["id"] for t in by_handler]


def test_name_description_metadata_and_created_by_over_http(
    api: ApiServer, cluster: Cluster, keys: ApiKeys, client: httpx.Client
) -> None:
    experiment = f"api-meta-{uuid.uuid4().hex[:8]}"
    metadata = {"experiment": experiment, "lr": 0.5, "tags": ["x"]}
    created = client.post("/tasks", json={
        "handler": "t.echo", "payload": {"n": 2}, "name": "sweep · 1",
        "description": "over HTTP", "metadata": metadata,
    })
    assert created.status_code == 201, created.text
    info = created.json()
    assert (info["name"], info["description"], info["metadata"], info["created_by"]) == (
        "sweep · 1", "over HTTP", metadata, "producer")  # the API key's name
    assert wait_result(client, info["id"]).json()["result"] == {"n": 2}
    record = client.get(f"/tasks/{info['id']}").json()
    assert record["state"] == "SUCCEEDED" and record["metadata"] == metadata
    assert record["created_by"] == "producer"

    unnamed = keys.create(cluster.namespace)  # a key without a name: its id says who
    batch = httpx.post(api.url + "/tasks/batch", headers={"X-API-Key": unnamed},
                       json=[{"handler": "t.echo", "name": experiment}], timeout=30)
    assert batch.status_code == 201, batch.text
    assert batch.json()[0]["created_by"] == digest(unnamed)[:12]
    keys.revoke(unnamed)

    listed = client.get("/tasks", params={"metadata": json.dumps({"experiment": experiment})})
    assert [t["id"] for t in listed.json()] == [info["id"]]
    named = client.get("/tasks", params={"name": "sweep · 1", "limit": 1000}).json()
    assert info["id"] in [t["id"] for t in named]
    assert [t["id"] for t in client.get("/tasks", params={"name": experiment}).json()] == [
        batch.json()[0]["id"]]
    assert "metadata" in problem(client.get("/tasks", params={"metadata": "[1]"}), 422)
    assert "metadata" in problem(client.get("/tasks", params={"metadata": "{"}), 422)
    assert "body.name" in problem(client.post("/tasks", json={"handler": "t.echo",
                                                              "name": ""}), 422)
    assert "body.metadata" in problem(client.post(
        "/tasks", json={"handler": "t.echo", "metadata": {"big": "x" * 70_000}}), 422)
    assert "body.metadata" in problem(client.post(
        "/tasks", json={"handler": "t.echo", "metadata": [1, 2]}), 422)


def test_cancel_cancel_tag_and_failed_tasks(client: httpx.Client) -> None:
    tag = f"api-{uuid.uuid4().hex[:8]}"
    later = [client.post("/tasks", json={"handler": "t.echo", "countdown": 600,
                                          "tags": [tag]}).json() for _ in range(3)]
    assert {t["state"] for t in later} == {"PENDING"}  # held in Redis until due
    cancelled = client.post(f"/tasks/{later[0]['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    assert "cancelled" in problem(client.get(f"/tasks/{later[0]['id']}/result"), 410,
                                  "TaskCancelledError")
    by_tag = client.post(f"/tasks/cancel-tag/{tag}")
    assert by_tag.status_code == 200
    assert by_tag.json() == {"tag": tag, "cancelled": sorted(t["id"] for t in later[1:])}
    listed = client.get("/tasks", params={"tag": tag, "state": "CANCELLED"}).json()
    assert {t["id"] for t in listed} == {t["id"] for t in later}
    # cancelling again changes nothing
    assert client.post(f"/tasks/{later[1]['id']}/cancel").json()["state"] == "CANCELLED"
    assert client.post(f"/tasks/cancel-tag/{tag}").json()["cancelled"] == []

    failing = client.post("/tasks", json={"handler": "t.flaky",
                                          "payload": {"fatal": True}}).json()
    detail = problem(wait_result(client, failing["id"]), 409, "TaskFailedError")
    assert detail == "ValueError: not retryable"  # the remote error, not its traceback

    # the result says FAILED first; the worker's record (and the registry) follows it
    def registered() -> bool:
        return failing["id"] in [t["id"] for t in client.get("/failed").json()]

    wait_until(registered, 10, what="the failed registry to list the task")
    assert failing["id"] in [t["id"] for t in client.get("/failed").json()]
    retried = client.post(f"/tasks/{failing['id']}/retry")
    assert retried.status_code == 201 and retried.json()["handler"] == "t.flaky"
    assert client.get(f"/tasks/{failing['id']}").json()["retried_as"] == retried.json()["id"]
    problem(client.post(f"/tasks/{failing['id']}/retry"), 422, "ValidationError")
    problem(client.get("/tasks/no-such-task"), 404, "UnknownTaskError")
    problem(client.post("/tasks/no-such-task/cancel"), 404, "UnknownTaskError")


def _loss(params: dict[str, Any]) -> float:
    return (params["x"] - 0.3) ** 2 + (params["y"] - 0.6) ** 2


SPEC = StudySpec(
    name="http-asktell",
    parameters=[Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)],
    objectives=[Objective("loss", minimize=True)],
    strategy=Strategy(initial_trials=4, max_trials=4, seed=0),  # Sobol only: quick steps
)


@pytest.mark.timeout(180)
def test_ask_tell_study_over_http(client: httpx.Client) -> None:
    before = client.get("/studies").json()
    bad = client.post("/studies", json={**SPEC.model_dump(mode="json"), "metadata": [1]})
    assert bad.status_code == 422, bad.text
    assert client.get("/studies").json() == before  # nothing stored
    created = client.post("/studies", json={**SPEC.model_dump(mode="json"),
                                            "description": "over HTTP", "metadata": {"lab": 7}})
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    assert created.json()["status"] == "CREATED"
    kept = client.get(f"/studies/{study_id}").json()
    assert (kept["description"], kept["metadata"]) == ("over HTTP", {"lab": 7})
    reported: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while True:
        study = client.get(f"/studies/{study_id}").json()
        if study["status"] == "COMPLETED":
            break
        assert time.monotonic() < deadline, study
        if len(reported) >= SPEC.strategy.max_trials:
            time.sleep(0.1)  # every trial is reported: the next step completes the study
            continue
        suggested = client.post(f"/studies/{study_id}/suggest", params={"count": 2})
        assert suggested.status_code == 200, suggested.text
        for trial in suggested.json():
            assert trial["status"] == "RUNNING" and set(trial["params"]) == {"x", "y"}
            loss = _loss(trial["params"])
            report = client.post(f"/studies/{study_id}/trials/{trial['index']}/report",
                                 json={"values": {"loss": loss}})
            assert report.json() == {"study_id": study_id, "index": trial["index"],
                                     "recorded": True}, report.text
            reported[trial["index"]] = loss
    assert study["completed_trials"] == 4 and study["failed_trials"] == 0
    assert len(reported) == 4

    best = client.get(f"/studies/{study_id}/best").json()
    assert best["index"] == min(reported, key=lambda i: reported[i])
    assert best["values"]["loss"] == pytest.approx(min(reported.values()))
    exported = client.get(f"/studies/{study_id}/export").json()
    assert exported["study"]["id"] == study_id and exported["study"]["status"] == "COMPLETED"
    assert {t["index"]: t["values"]["loss"] for t in exported["trials"]} == pytest.approx(
        reported)
    trials = client.get(f"/studies/{study_id}/trials", params={"status": "COMPLETED"})
    assert len(trials.json()) == 4
    assert study_id in [s["id"] for s in client.get("/studies",
                                                    params={"status": "COMPLETED"}).json()]

    # reports are written once: the same values again are a no-op, others a conflict
    index, loss = next(iter(reported.items()))
    same = client.post(f"/studies/{study_id}/trials/{index}/report",
                       json={"values": {"loss": loss}})
    assert same.status_code == 200 and same.json()["recorded"] is False
    problem(client.post(f"/studies/{study_id}/trials/{index}/report",
                        json={"values": {"loss": loss + 1}}), 409)
    problem(client.post(f"/studies/{study_id}/suggest"), 409, "InvalidTransitionError")
    problem(client.post(f"/studies/{study_id}/trials/99/report",
                        json={"values": {"loss": 1.0}}), 409, "InvalidTransitionError")


def test_study_lifecycle_errors_and_delete(client: httpx.Client) -> None:
    spec = SPEC.model_copy(update={"name": "http-lifecycle"}).model_dump(mode="json")
    study_id = client.post("/studies", json=spec).json()["id"]
    assert "no evaluator" in problem(client.post(f"/studies/{study_id}/run"), 422)
    assert "CREATED" in problem(client.post(f"/studies/{study_id}/pause"), 409,
                                "InvalidTransitionError")
    problem(client.post(f"/studies/{study_id}/complete"), 409, "InvalidTransitionError")
    assert client.get(f"/studies/{study_id}/best").json() is None  # nothing completed
    problem(client.get(f"/studies/{study_id}/trials/0"), 404, "TrialNotFoundError")
    problem(client.post(f"/studies/{study_id}/trials/0/report-failure",
                        json={"reason": "rig jammed"}), 404, "TrialNotFoundError")
    assert client.delete(f"/studies/{study_id}").status_code == 204
    problem(client.get(f"/studies/{study_id}"), 404, "StudyNotFoundError")
    problem(client.delete(f"/studies/{study_id}"), 404, "StudyNotFoundError")


def test_namespaces_see_only_their_own(client: httpx.Client, client_b: httpx.Client
                                       ) -> None:
    study_id = client.post("/studies", json=SPEC.model_copy(
        update={"name": "a-only"}).model_dump(mode="json")).json()["id"]
    task_id = client.post("/tasks", json={"handler": "t.echo", "countdown": 600,
                                          "tags": ["a-only"]}).json()["id"]
    for method, path, body in (
        ("GET", f"/studies/{study_id}", None),
        ("GET", f"/studies/{study_id}/trials", None),
        ("GET", f"/studies/{study_id}/export", None),
        ("POST", f"/studies/{study_id}/suggest", None),
        ("POST", f"/studies/{study_id}/trials/0/report", {"values": {"loss": 1.0}}),
        ("POST", f"/studies/{study_id}/complete", None),
        ("DELETE", f"/studies/{study_id}", None),
        ("GET", f"/tasks/{task_id}", None),
        ("GET", f"/tasks/{task_id}/result", None),
        ("POST", f"/tasks/{task_id}/cancel", None),
    ):
        response = client_b.request(method, path, json=body)
        problem(response, 404)  # not 403: B cannot even learn that the id exists
    assert study_id not in [s["id"] for s in client_b.get("/studies").json()]
    assert client_b.post("/tasks/cancel-tag/a-only").json()["cancelled"] == []
    assert client_b.get("/tasks", params={"tag": "a-only"}).json() == []
    # A's are untouched
    assert client.get(f"/studies/{study_id}").json()["status"] == "CREATED"
    assert client.get(f"/tasks/{task_id}").json()["state"] == "PENDING"
    assert client.post(f"/tasks/{task_id}/cancel").json()["state"] == "CANCELLED"


def test_oversized_bodies_are_413(client: httpx.Client) -> None:
    limit = MAX_PAYLOAD + 64 * 1024
    big = {"handler": "t.echo", "payload": {"blob": "x" * (limit + 10)}}
    detail = problem(client.post("/tasks", json=big), 413, "PayloadTooLarge")
    assert str(limit) in detail

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"handler": "t.echo", "payload": {"blob": "'
        for _ in range(limit // 16384 + 2):
            yield b"x" * 16384
        yield b'"}}'

    chunked = client.post("/tasks", content=chunks(),
                          headers={"Content-Type": "application/json"})
    problem(chunked, 413, "PayloadTooLarge")
    # under the body limit but over the payload limit: the facade's own check, 422
    medium = {"handler": "t.echo", "payload": {"blob": "x" * (MAX_PAYLOAD + 10)}}
    assert "the limit is 100000" in problem(client.post("/tasks", json=medium), 422)


def test_bad_input_is_422_with_a_clear_message(client: httpx.Client) -> None:
    detail = problem(client.post("/tasks", json={"handler": "no.such.handler"}), 422,
                     "UnknownHandlerError")
    assert detail.startswith("unknown handler 'no.such.handler'")
    assert "t.echo" in detail  # the handlers the workers declared
    for priority in ("urgentest", 7):
        detail = problem(client.post("/tasks", json={"handler": "t.echo",
                                                     "priority": priority}), 422,
                         "ValidationError")
        assert "body.priority" in detail and "unknown priority" in detail
    assert "queue" in problem(client.post("/tasks", json={"handler": "t.echo",
                                                           "queue": "nope"}), 422)
    assert "in the past" in problem(client.post(
        "/tasks", json={"handler": "t.echo", "eta": "2001-01-01T00:00:00Z"}), 422)
    assert "body.nonsense" in problem(client.post(
        "/tasks", json={"handler": "t.echo", "nonsense": 1}), 422)
    assert "JSON" in problem(client.post(
        "/tasks", content=b'{"handler": ', headers={"Content-Type": "application/json"}),
        422)
    problem(client.post("/tasks", json={"handler": "t.echo", "depends_on": ["nope"]}),
            409, "DependencyError")
    assert "query.limit" in problem(client.get("/tasks", params={"limit": 0}), 422)
    assert "query.state" in problem(client.get("/tasks", params={"state": "DONE"}), 422)

    spec = SPEC.model_dump(mode="json")
    spec["parameters"][0].update(low=2.0, high=1.0)
    assert "must be below high" in problem(client.post("/studies", json=spec), 422)
    spec = SPEC.model_copy(update={"evaluator": "no.such.evaluator"}).model_dump(mode="json")
    problem(client.post("/studies", json=spec), 422, "UnknownHandlerError")
    study_id = client.post("/studies", json=SPEC.model_dump(mode="json")).json()["id"]
    assert "query.count" in problem(
        client.post(f"/studies/{study_id}/suggest", params={"count": 0}), 422)
    assert "body.values" in problem(client.post(f"/studies/{study_id}/trials/0/report",
                                                json={"values": {"loss": "high"}}), 422)
    problem(client.post("/schedules", json={"name": "bad", "handler": "t.echo",
                                            "cron": "99 * * * *"}), 422, "ValidationError")
    problem(client.post("/schedules", json={"name": "bad", "handler": "t.echo"}), 422)
    problem(client.get("/no/such/route"), 404, "NotFound")
    problem(client.put("/tasks"), 405, "MethodNotAllowed")


def test_schedules_over_http(client: httpx.Client) -> None:
    name = f"api-{uuid.uuid4().hex[:8]}"
    created = client.post("/schedules", json={"name": name, "handler": "t.echo",
                                              "payload": {"from": "beat"}, "every_s": 3600,
                                              "priority": "low", "tags": ["sched"]})
    assert created.status_code == 201, created.text
    assert created.json()["every_s"] == 3600 and created.json()["priority"] == 0
    assert name in [s["name"] for s in client.get("/schedules").json()]
    problem(client.post("/schedules", json={"name": name, "handler": "t.echo",
                                            "every_s": 60}), 422)  # exists: replace
    assert client.post(f"/schedules/{name}/pause").json()["enabled"] is False
    assert client.post(f"/schedules/{name}/resume").json()["enabled"] is True
    assert client.get(f"/schedules/{name}").json()["next_run_at"] is not None
    assert client.delete(f"/schedules/{name}").status_code == 204
    problem(client.get(f"/schedules/{name}"), 404, "NotFound")
    problem(client.delete(f"/schedules/{name}"), 404)
    problem(client.post(f"/schedules/{name}/pause"), 404)


def test_monitor_and_health(api: ApiServer, client: httpx.Client, cluster: Cluster
                            ) -> None:
    client.post("/tasks", json={"handler": "t.echo"})
    queues = client.get("/monitor/queues").json()
    assert {q["queue"] for q in queues} == set(QUEUES) and len(queues) == 3 * 5
    workers = client.get("/monitor/workers").json()
    assert workers and set(QUEUES) <= set(workers[0]["queues"])
    metrics = client.get("/monitor/metrics", params={"window_s": 600}).json()
    assert metrics["window_s"] == 600 and "t.echo" in metrics["handlers"]
    problem(client.get("/monitor/metrics", params={"window_s": -1}), 422)

    healthy = httpx.get(api.url + "/health", params={"require_beat": "false"})  # no key
    assert healthy.status_code == 200, healthy.text
    assert healthy.json()["ok"] is True
    assert healthy.json()["checks"] == []  # without a key: only whether it is healthy
    unhealthy = httpx.get(api.url + "/health")  # beat is required by default; none runs
    assert unhealthy.status_code == 503 and unhealthy.json() == {"ok": False, "checks": []}
    detailed = client.get("/health")  # a key holder sees each check
    assert detailed.status_code == 503
    checks = {name: ok for name, ok, _ in detailed.json()["checks"]}
    assert checks["beat"] is False and checks["redis"] is True
