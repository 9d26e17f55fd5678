"""The hot task routes served on the loop, against a real `bo-queue api` and a real worker:
many requests at once all succeed, and those routes answer while every thread of the
server's pool is taken by sync routes that block; suggests wait on the loop, taking no
thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx

from bo_queue import BOQueue, TaskState, Workflow
from bo_queue.studies.manager import STEP
from bo_queue.testing import wait_until
from tests.integration.api_server import ApiServer

CLUSTER = {"workers": 1, "concurrency": 2}  # tests/conftest.py's `cluster`
IN_FLIGHT = 200
# More than anyio's default thread limiter (40 tokens), which FastAPI's sync routes share.
BLOCKERS = 48
HOLD_S = 40.0  # the longest a blocker may hold its thread


def test_many_concurrent_requests_all_succeed(client: httpx.Client) -> None:
    headers = dict(client.headers)

    async def burst() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=str(client.base_url), headers=headers,
                                     timeout=60,
                                     # a connection each: a kept-alive one the server
                                     # closed after its 5 s idle time would fail a POST
                                     limits=httpx.Limits(max_connections=IN_FLIGHT,
                                                         max_keepalive_connections=0)) as http:
            async def one(i: int) -> tuple[str, httpx.Response]:
                made = await http.post("/tasks", json={"handler": "t.echo",
                                                       "payload": {"i": i}})
                if made.status_code != 201:
                    return "POST /tasks", made
                task_id = made.json()["id"]
                got = await http.get(f"/tasks/{task_id}")
                if got.status_code != 200 or got.json()["id"] != task_id:
                    return "GET /tasks/{id}", got
                return "GET /tasks/{id}/result", await http.get(f"/tasks/{task_id}/result")

            async def batch(i: int) -> tuple[str, httpx.Response]:
                return "POST /tasks/batch", await http.post(
                    "/tasks/batch", json=[{"handler": "t.echo", "payload": {"b": i, "k": k}}
                                          for k in range(3)])

            return await asyncio.gather(*(one(i) if i % 4 else batch(i)
                                          for i in range(IN_FLIGHT)))

    answers = asyncio.run(burst())
    assert len(answers) == IN_FLIGHT
    for route, response in answers:
        expected = {201} if route.startswith("POST") else {200, 202}
        assert response.status_code in expected, (route, response.status_code, response.text)
    batches = [r.json() for route, r in answers if route == "POST /tasks/batch"]
    assert len(batches) == IN_FLIGHT // 4 and all(len(b) == 3 for b in batches)
    ids = [r.json()["id"] for route, r in answers if route != "POST /tasks/batch"]
    ids += [info["id"] for b in batches for info in b]
    assert len(set(ids)) == len(ids) == IN_FLIGHT * 3 // 4 + IN_FLIGHT // 4 * 3
    # and every one of them runs: the records the async routes wrote are real ones
    last = ids[-1]
    wait_until(lambda: client.get(f"/tasks/{last}/result").status_code == 200, timeout=60)
    assert client.get(f"/tasks/{last}/result").json()["state"] == "SUCCEEDED"


def test_hot_routes_answer_while_the_thread_pool_is_full(
    api: ApiServer, client: httpx.Client, bq: BOQueue
) -> None:
    headers = dict(client.headers)
    done = client.post("/tasks", json={"handler": "t.echo", "payload": {"x": 1}}).json()["id"]
    wait_until(lambda: client.get(f"/tasks/{done}/result").status_code == 200, timeout=60)
    # a run that waits on vars.approved: POST /workflows/{id}/wait (a sync route) holds a
    # pool thread until it ends
    flow = (Workflow("held").step("first", "t.echo", {})
            .wait(until="vars.approved == true", name="approval")
            .step("last", "t.echo", {}).spec().model_dump(mode="json"))
    run_id = client.post("/workflows", json={"definition": flow}).json()["id"]

    def call(method: str, path: str, **params: Any) -> httpx.Response:
        return httpx.request(method, api.url + path, params=params, headers=headers,
                             timeout=60)

    with ThreadPoolExecutor(BLOCKERS + 8) as pool:
        # each holds for the route's longest wait (60 s): the run ends in `finally`
        blockers = [pool.submit(call, "POST", f"/workflows/{run_id}/wait", timeout=60)
                    for _ in range(BLOCKERS)]
        probes: list[Future[httpx.Response]] = []

        def pool_is_full() -> bool:
            """No sync route (each needs a thread, for its key lookup, then for itself)
            answered for three seconds: every thread is held by a blocker, not still
            changing hands between the blockers' dependencies and their waits."""
            answered = sum(p.done() for p in probes)
            probes.append(pool.submit(call, "GET", "/failed"))
            concurrent.futures.wait(probes[-1:], timeout=3.0)
            return sum(p.done() for p in probes) == answered

        try:
            wait_until(pool_is_full, timeout=HOLD_S / 2, what="every pool thread taken")
            probe = probes[-1]
            with httpx.Client(base_url=api.url, headers=headers, timeout=5) as hot:
                for i in range(5):
                    made = hot.post("/tasks", json={"handler": "t.echo", "payload": {"i": i}})
                    assert made.status_code == 201, made.text
                    assert hot.get(f"/tasks/{made.json()['id']}").status_code == 200
                    batch = hot.post("/tasks/batch", json=[{"handler": "t.echo"}])
                    assert batch.status_code == 201, batch.text
                    result = hot.get(f"/tasks/{done}/result")
                    assert result.status_code == 200 and result.json()["result"] == {"x": 1}
            # answered while the sync routes could still get no thread
            assert not any(b.done() for b in blockers), "a blocker gave its thread back"
            assert not probe.done(), "a sync route got a thread: the pool was not full"
        finally:  # end the run (in process: PATCH .../vars would wait for a thread too)
            bq.workflows.set_vars(run_id, approved=True)
        assert probe.result().status_code == 200  # it runs once a thread is free
        assert all(b.result().json()["status"] == "SUCCEEDED" for b in blockers)


def test_suggests_wait_on_the_loop_not_in_the_thread_pool(
    api: ApiServer, client: httpx.Client, bq: BOQueue
) -> None:
    """More suggests at once than the pool has threads, each waiting for a study step that
    no worker runs (this module's workers serve only `default`, not `bo`): a sync route
    still answers at once, and each suggest ends 504 at its timeout."""
    headers = dict(client.headers)
    spec = {"name": "waits", "parameters": [{"kind": "range", "name": "x", "low": 0.0,
                                             "high": 1.0}],
            "objectives": [{"name": "loss"}]}
    made = client.post("/studies", json=spec)
    assert made.status_code == 201, made.text
    study_id = made.json()["id"]

    def steps_waiting() -> int:
        return len(bq.tasks(TaskState.QUEUED, handler=STEP, limit=1000))

    def suggest() -> httpx.Response:
        return httpx.post(f"{api.url}/studies/{study_id}/suggest", params={"timeout": HOLD_S / 2},
                          headers=headers, timeout=HOLD_S)

    with ThreadPoolExecutor(BLOCKERS) as pool:
        suggests = [pool.submit(suggest) for _ in range(BLOCKERS)]
        wait_until(lambda: steps_waiting() == BLOCKERS, timeout=HOLD_S / 4,
                   what="every suggest's step queued")
        probe = httpx.get(f"{api.url}/failed", headers=headers, timeout=5)
        assert probe.status_code == 200, probe.text
        assert not any(s.done() for s in suggests)  # answered while they all still wait
        answers = [s.result() for s in suggests]
    assert {a.status_code for a in answers} == {504}, answers[0].text
