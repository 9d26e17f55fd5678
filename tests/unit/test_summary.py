"""bq.summary() and the namespace metadata, on fakeredis."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from bo_queue import BOQueue, Priority, TaskState, ValidationError
from bo_queue.api import app as app_module
from bo_queue.api import ops
from bo_queue.api.routing import caller
from bo_queue.errors import BOQueueError
from bo_queue.monitor import manager
from bo_queue.monitor.metadata import METADATA_LIMIT_BYTES

with warnings.catch_warnings():  # Starlette >= 1.x asks for httpx2 over httpx; either works
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from fastapi.testclient import TestClient


def create(bq: BOQueue, task_id: str, handler: str = "unit.h",
           state: TaskState = TaskState.QUEUED) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {
            "id": task_id, "handler": handler, "queue": "default",
            "priority": Priority.NORMAL, "tags": (), "parent_id": None, "state": state,
            "created_at": time.time(),
        })
        pipe.execute()


def test_an_empty_namespace_has_every_state_at_zero(bq: BOQueue) -> None:
    summary = bq.summary()
    assert summary.total == 0
    assert summary.by_state == {s.value: 0 for s in TaskState}
    assert summary.by_handler == {}


def test_summary_counts_by_state_and_by_handler(bq: BOQueue) -> None:
    for i in range(3):
        create(bq, f"a{i}", "unit.a")
    create(bq, "b0", "unit.b")
    create(bq, "b1", "unit.b")
    bq.records.transition("a0", TaskState.FAILED, error="x")
    bq.records.transition("b0", TaskState.SUCCEEDED, finished_at=time.time())
    summary = bq.summary()
    assert summary.total == 5
    assert summary.by_state["QUEUED"] == 3
    assert summary.by_state["FAILED"] == 1 and summary.by_state["SUCCEEDED"] == 1
    assert summary.by_handler == {"unit.a": {"FAILED": 1, "QUEUED": 2},
                                  "unit.b": {"QUEUED": 1, "SUCCEEDED": 1}}
    with pytest.raises(ValueError):  # frozen
        summary.total = 0  # type: ignore[misc]


def test_summary_pages_the_indexes_and_skips_expired_records(
        bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager, "SUMMARY_PAGE", 7)
    for i in range(30):
        create(bq, f"t{i:02}", "unit.a" if i % 2 else "unit.b")
    bq.redis.delete(bq.keys.task("t00"))  # its record expired; its id is still indexed
    summary = bq.summary()
    assert summary.total == 30 and summary.by_state["QUEUED"] == 30
    assert summary.by_handler == {"unit.a": {"QUEUED": 15}, "unit.b": {"QUEUED": 14}}


def test_metadata_merges_and_keeps_its_timestamps(bq: BOQueue) -> None:
    assert bq.metadata() == {}
    first = bq.update_metadata({"owner": "lab-3", "config": {"rounds": 4}})
    assert first["owner"] == "lab-3" and first["config"] == {"rounds": 4}
    initialized = first["initialized_at"]
    assert datetime.fromisoformat(initialized).utcoffset() is not None
    time.sleep(0.01)
    second = bq.update_metadata({"owner": "lab-4", "version": 2})
    assert second["initialized_at"] == initialized
    assert second["last_updated"] >= first["last_updated"]
    assert {k: v for k, v in second.items() if k not in ("initialized_at", "last_updated")} == {
        "owner": "lab-4", "config": {"rounds": 4}, "version": 2}
    assert bq.metadata() == second


@pytest.mark.parametrize("bad", [
    ["not", "a", "dict"], "text", None,
    {"": 1}, {1: "int key"}, {"x" * 201: 1},
    {"initialized_at": "now"}, {"last_updated": 1},
    {"bytes": b"raw"}, {"set": {1, 2}}, {"nan": float("nan")}, {"obj": object()},
    {"big": "x" * METADATA_LIMIT_BYTES},
    {"surrogate\ud800": 1},
])
def test_bad_metadata_is_refused_and_writes_nothing(bq: BOQueue, bad: Any) -> None:
    bq.update_metadata({"kept": True})
    before = bq.metadata()
    with pytest.raises(ValidationError):
        bq.update_metadata(bad)
    assert bq.metadata() == before


def test_metadata_over_the_limit_once_merged_writes_nothing(bq: BOQueue) -> None:
    half = "x" * (METADATA_LIMIT_BYTES // 2)
    bq.update_metadata({"a": half})
    before = bq.metadata()
    with pytest.raises(ValidationError, match="limit"):
        bq.update_metadata({"b": half})
    assert bq.metadata() == before
    bq.update_metadata({"a": "small", "b": half})  # replacing "a" makes room
    assert bq.metadata()["b"] == half


def test_metadata_takes_thousands_of_keys_at_once(bq: BOQueue) -> None:
    many = {f"k{i}": i for i in range(5000)}  # more than Lua's unpack() could pass
    merged = bq.update_metadata(many)
    assert len(merged) == 5000 + 2 and merged["k4999"] == 4999


# -- over HTTP (the ops routes, through TestClient) ------------------------------------------


@pytest.fixture
def client(bq: BOQueue) -> Iterator[TestClient]:
    app = FastAPI()
    app.add_exception_handler(BOQueueError, app_module._bo_queue_error)
    app.add_exception_handler(RequestValidationError,
                              app_module._request_invalid)
    app.include_router(ops.namespace)
    app.dependency_overrides[caller] = lambda: bq
    with TestClient(app) as test_client:
        yield test_client


def test_summary_over_http(bq: BOQueue, client: TestClient) -> None:
    create(bq, "a0", "unit.a")
    body = client.get("/summary").json()
    assert body["total"] == 1 and body["by_state"]["QUEUED"] == 1
    assert body["by_handler"] == {"unit.a": {"QUEUED": 1}}
    assert set(body["by_state"]) == {s.value for s in TaskState}


def test_metadata_over_http(client: TestClient) -> None:
    assert client.get("/metadata").json() == {}
    merged = client.patch("/metadata", json={"owner": "lab", "n": [1, 2]}).json()
    assert merged["owner"] == "lab" and merged["n"] == [1, 2] and "initialized_at" in merged
    assert client.get("/metadata").json() == merged
    for bad in ([1, 2], "text", {"": 1}, {"last_updated": "x"},
                {"big": "x" * METADATA_LIMIT_BYTES}):
        response = client.patch("/metadata", json=bad)
        assert response.status_code == 422, response.text
        assert set(response.json()) == {"error", "detail"}
    not_json = client.patch("/metadata", content=b"{not json",
                            headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert client.get("/metadata").json() == merged
