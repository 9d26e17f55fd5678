"""Task update / pause / resume / add-dependency and queue pause / resume over HTTP,
through a real `bo-queue api` process and a real worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from bo_queue.api.keys import ApiKeys
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster
from tests.integration.api_server import ApiServer
from tests.integration.test_api import problem, wait_result


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=1)
    yield c
    c.close()


@pytest.fixture(scope="module")
def client(redis_url: str, cluster: Cluster) -> Iterator[httpx.Client]:
    server = ApiServer(redis_url, cluster.namespace)
    keys = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        server.wait_ready()
        key = ApiKeys(keys).create(cluster.namespace, name="pauser")
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30) as c:
            yield c
    finally:
        keys.close()
        server.stop()


def _submit(client: httpx.Client, **body: object) -> dict[str, object]:
    response = client.post("/tasks", json={"handler": "t.echo", "payload": {}, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_pause_update_resume_a_task(
    client: httpx.Client, cluster: Cluster, evidence: redis.Redis
) -> None:
    task = _submit(client, countdown=1.0, payload={"n": 1})
    paused = client.post(f"/tasks/{task['id']}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "PAUSED"
    updated = client.patch(f"/tasks/{task['id']}", json={"priority": "high", "name": "x"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["priority"] == 2 and updated.json()["name"] == "x"
    assert updated.json()["state"] == "PAUSED"
    problem(client.patch(f"/tasks/{task['id']}", json={"priority": "soon"}), 422)
    problem(client.patch(f"/tasks/{task['id']}", json={"colour": "red"}), 422)
    paused_key = cluster.producer().keys.paused
    wait_until(lambda: evidence.hexists(paused_key, str(task["id"])), 20,
               what="the worker to hold the paused task back")
    resumed = client.post(f"/tasks/{task['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "QUEUED"
    assert wait_result(client, str(task["id"])).json()["result"] == {"n": 1}
    problem(client.post(f"/tasks/{task['id']}/pause"), 422, "ValidationError")
    problem(client.post(f"/tasks/{task['id']}/resume"), 422, "ValidationError")
    problem(client.patch(f"/tasks/{task['id']}", json={"name": "late"}), 422)
    assert client.get(f"/tasks/{task['id']}").json()["name"] == "x"
    problem(client.post("/tasks/no-such-task/pause"), 404, "UnknownTaskError")


def test_add_dependency(client: httpx.Client) -> None:
    first = _submit(client, countdown=1.0, payload={"step": 1})
    second = _submit(client, payload={"step": 2})
    wait_result(client, str(second["id"]))
    later = _submit(client, countdown=0.5, payload={"step": 3})
    added = client.post(f"/tasks/{later['id']}/dependencies",
                        json={"depends_on": [first["id"]]})
    assert added.status_code == 200, added.text
    assert added.json()["depends_on"] == [first["id"]]
    assert wait_result(client, str(later["id"])).json()["result"] == {"step": 3}
    ran = [client.get(f"/tasks/{t['id']}").json() for t in (first, later)]
    assert ran[0]["finished_at"] <= ran[1]["started_at"]
    problem(client.post(f"/tasks/{first['id']}/dependencies",
                        json={"depends_on": ["no-such-task"]}), 422)  # first has ended
    pending = _submit(client, countdown=600)
    problem(client.post(f"/tasks/{pending['id']}/dependencies",
                        json={"depends_on": ["no-such-task"]}), 409, "DependencyError")
    problem(client.post(f"/tasks/{pending['id']}/dependencies",
                        json={"depends_on": [pending["id"]]}), 409, "DependencyError")
    problem(client.post(f"/tasks/{pending['id']}/dependencies", json={"depends_on": []}), 422)
    assert client.get(f"/tasks/{pending['id']}").json()["depends_on"] == []
    client.post(f"/tasks/{pending['id']}/cancel")


def test_pause_and_resume_a_queue(
    client: httpx.Client, cluster: Cluster, evidence: redis.Redis
) -> None:
    paused = client.post("/queues/default/pause")
    assert paused.status_code == 200 and paused.json() == {
        "queue": "default", "paused": True, "resent": 0}
    try:
        task = _submit(client, payload={"tag": uuid.uuid4().hex})
        held = cluster.producer().keys.queue_held("default")
        wait_until(lambda: evidence.hexists(held, str(task["id"])), 20,
                   what="the worker to hold the task back")
        stats = [s for s in client.get("/monitor/queues").json() if s["queue"] == "default"]
        assert all(s["paused"] for s in stats) and sum(s["held"] for s in stats) == 1
        assert client.get(f"/tasks/{task['id']}").json()["state"] == "QUEUED"
    finally:
        resumed = client.post("/queues/default/resume")
    assert resumed.json() == {"queue": "default", "paused": False, "resent": 1}
    assert wait_result(client, str(task["id"])).status_code == 200
    problem(client.post("/queues/nope/pause"), 422, "ValidationError")
