"""A task's name, description and metadata: validated at the edge, kept on the record,
read back by info() (records written before them too), and filtered by bq.tasks()."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import pytest
from fastapi import FastAPI

import bo_queue
from bo_queue import BOQueue, Priority, TaskRequest, TaskState, ValidationError
from bo_queue.aio import AsyncBOQueue
from bo_queue.api.keys import ApiKeys, AsyncApiKeys, digest
from bo_queue.api.tasks import router as tasks_router

with warnings.catch_warnings():  # Starlette >= 1.x asks for httpx2 over httpx; either works
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from fastapi.testclient import TestClient

from .fakes import fake_aq


@bo_queue.handler("unit.meta.echo")
def _echo(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return payload


class _Producer:
    @contextmanager
    def batch(self) -> Iterator[None]:
        yield


@pytest.fixture
def sent(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids BOQueue hands to the broker, in order; nothing reaches a real broker."""
    out: list[str] = []

    def send(task_id: str, message: Any, producer: Any = None, kept: bool = False) -> None:
        out.append(task_id)

    @contextmanager
    def producer_or_acquire(*args: Any, **kwargs: Any) -> Iterator[_Producer]:
        yield _Producer()

    monkeypatch.setattr(bq, "send", send)
    monkeypatch.setattr(bq.app, "producer_or_acquire", producer_or_acquire)
    return out


META = {"experiment": "e7", "lr": 0.01, "nested": {"seeds": [1, 2, 3]}, "ok": True}


def test_name_description_metadata_round_trip_through_info(
    bq: BOQueue, sent: list[str]
) -> None:
    handle = bq.submit("unit.meta.echo", {"x": 1}, name="sweep 7 · run 3",
                       description="the long\nstory", metadata=META)
    info = bq.info(handle.id)
    assert sent == [handle.id]
    assert (info.name, info.description, info.metadata) == (
        "sweep 7 · run 3", "the long\nstory", META)
    assert info.created_by is None  # a submit in Python, not over HTTP
    # stored as JSON text on the record, not in the message
    assert bq.redis.hget(bq.keys.task(handle.id), "metadata") == (
        '{"experiment":"e7","lr":0.01,"nested":{"seeds":[1,2,3]},"ok":true}')


def test_submit_many_keeps_them_and_records_created_by(
    bq: BOQueue, sent: list[str]
) -> None:
    first, second = bq.submit_many([
        {"handler": "unit.meta.echo", "name": "a", "metadata": {"k": 1}},
        TaskRequest(handler="unit.meta.echo", description=""),
    ], created_by="ci-key")
    one, two = bq.info(first.id), bq.info(second.id)
    assert (one.name, one.metadata, one.created_by) == ("a", {"k": 1}, "ci-key")
    assert (two.name, two.description, two.metadata, two.created_by) == (
        None, "", None, "ci-key")


def test_they_default_to_none(bq: BOQueue, sent: list[str]) -> None:
    info = bq.info(bq.submit("unit.meta.echo").id)
    assert (info.name, info.description, info.metadata, info.created_by) == (
        None, None, None, None)
    assert not {"name", "description", "metadata", "created_by"} & set(
        bq.redis.hkeys(bq.keys.task(info.id)))


def test_a_record_written_before_them_still_reads(bq: BOQueue) -> None:
    bq.redis.hset(bq.keys.task("old"), mapping={
        "id": "old", "handler": "unit.meta.echo", "queue": "default",
        "priority": str(int(Priority.NORMAL)), "tags": "[]", "state": "SUCCEEDED",
        "created_at": str(time.time()),
    })
    info = bq.info("old")
    assert info.state is TaskState.SUCCEEDED
    assert (info.name, info.description, info.metadata, info.created_by) == (
        None, None, None, None)


@pytest.mark.parametrize(("fields", "says"), [
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": 7}, "name"),
    ({"name": "bad \ud800"}, "name"),
    ({"description": "x" * 10_001}, "description"),
    ({"description": "\udfff"}, "description"),
    ({"metadata": ["not", "an", "object"]}, "metadata"),
    ({"metadata": "text"}, "metadata"),
    ({"metadata": {1: "int key"}}, "metadata"),
    ({"metadata": {"blob": "x" * (64 * 1024)}}, "metadata is"),
    ({"metadata": {"v": float("nan")}}, "not JSON-serialisable"),
    ({"metadata": {"v": {1, 2}}}, "not JSON-serialisable"),
    ({"metadata": {"v": b"bytes"}}, "not JSON-serialisable"),
])
def test_bad_input_is_rejected_and_nothing_is_written(
    bq: BOQueue, sent: list[str], fields: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        bq.submit("unit.meta.echo", **fields)
    with pytest.raises(ValidationError, match=f"request 1: .*{says}"):
        bq.submit_many([{"handler": "unit.meta.echo"},
                        {"handler": "unit.meta.echo", **fields}])
    assert sent == []
    assert bq.redis.keys(bq.keys.task("*")) == []


def test_the_limits_themselves_are_accepted(bq: BOQueue, sent: list[str]) -> None:
    blob = "x" * (64 * 1024 - len('{"blob":""}'))  # 64 KiB exactly, as compact JSON
    handle = bq.submit("unit.meta.echo", name="n" * 200, description="d" * 10_000,
                       metadata={"blob": blob})
    info = bq.info(handle.id)
    assert info.name == "n" * 200 and info.metadata == {"blob": blob}


def create(bq: BOQueue, task_id: str, **fields: Any) -> None:
    with bq.redis.pipeline(transaction=False) as pipe:
        bq.records.create(pipe, {
            "id": task_id, "handler": "unit.h", "queue": "default",
            "priority": Priority.NORMAL, "tags": (), "state": TaskState.QUEUED,
            "created_at": time.time(), **fields,
        })
        pipe.execute()


def test_tasks_filter_by_name_and_metadata(bq: BOQueue) -> None:
    create(bq, "a", name="sweep", metadata={"exp": "e7", "seed": 1})
    create(bq, "b", name="sweep", metadata={"exp": "e7", "seed": 2, "flag": True})
    create(bq, "c", name="other", metadata={"exp": "e8", "seed": 1, "flag": 1})
    create(bq, "d")  # neither
    create(bq, "e", name="Sweep")

    def ids(**filters: Any) -> set[str]:
        return {info.id for info in bq.tasks(**filters)}

    assert ids(name="sweep") == {"a", "b"}
    assert ids(metadata={"exp": "e7"}) == {"a", "b"}
    assert ids(metadata={"seed": 1}) == {"a", "c"}
    assert ids(name="sweep", metadata={"seed": 1}) == {"a"}
    assert ids(metadata={"exp": "e7", "seed": 3}) == set()
    assert ids(metadata={"missing": None}) == set()  # a key must be there
    assert ids(metadata={"flag": True}) == {"b"}  # true is not 1, as in JSON
    assert ids(metadata={"flag": 1}) == {"c"}
    assert ids(metadata={}) == {"a", "b", "c", "d", "e"}
    assert ids(name="sweep", state=TaskState.SUCCEEDED) == set()
    assert [t.id for t in bq.tasks(TaskState.QUEUED, name="sweep", limit=1)] in (["a"], ["b"])
    with pytest.raises(ValidationError, match="mapping"):
        bq.tasks(metadata=["exp"])


def test_a_retry_keeps_them(
    bq: BOQueue, sent: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = bq.submit("unit.meta.echo", {"x": 1}, name="n", description="d",
                       metadata={"k": "v"})
    bq.records.transition(failed.id, TaskState.FAILED, error="ValueError: boom")
    bq.redis.zadd(bq.keys.failed, {failed.id: time.time()})
    bq.results.redis.set(bq.results.key(failed.id), json.dumps(
        {"status": "FAILURE", "result": {}, "args": [{"x": 1}]}))  # Celery's (result_extended)
    again = bq.records.get(bq.retry(failed.id).id)
    assert again is not None
    assert (again.name, again.description, again.metadata) == ("n", "d", {"k": "v"})


class _Namespaces:
    """What current_aq reads from the app (the submit routes are async): the key store and
    an AsyncBOQueue per namespace, on one fake server."""

    def __init__(self, aq: AsyncBOQueue) -> None:
        self.aq = aq

    def async_keys(self) -> AsyncApiKeys:
        return AsyncApiKeys(self.aq.redis)

    def aget(self, namespace: str) -> AsyncBOQueue:
        assert namespace == "unit"
        return self.aq


def test_the_api_records_its_keys_name_as_created_by(
    bq: BOQueue, server: fakeredis.FakeServer, sent: list[str]
) -> None:
    keys = ApiKeys(bq.redis)
    named, unnamed = keys.create("unit", name="lab-7"), keys.create("unit")
    entry = keys.entry(unnamed)
    assert entry is not None and entry["id"] == digest(unnamed)[:12]
    assert keys.entry("boq_nope") is None and keys.namespace_of(named) == "unit"
    app = FastAPI()
    app.include_router(tasks_router)
    aq = fake_aq(bq, server)
    app.state.namespaces = _Namespaces(aq)
    with TestClient(app) as client:
        assert client.portal.call(AsyncApiKeys(aq.redis).entry, unnamed) == entry
        made = client.post("/tasks", headers={"X-API-Key": named}, json={
            "handler": "unit.meta.echo", "name": "n", "metadata": {"k": [1]}})
        assert made.status_code == 201, made.text
        assert (made.json()["created_by"], made.json()["metadata"]) == ("lab-7", {"k": [1]})
        batch = client.post("/tasks/batch", headers={"Authorization": f"Bearer {unnamed}"},
                            json=[{"handler": "unit.meta.echo"}])
        assert batch.json()[0]["created_by"] == entry["id"]
        assert client.post("/tasks", json={"handler": "unit.meta.echo"}).status_code == 401
        assert client.post("/tasks", headers={"X-API-Key": "boq_nope"},
                           json={"handler": "unit.meta.echo"}).status_code == 401
        client.portal.call(aq.close)
    assert bq.info(made.json()["id"]).created_by == "lab-7"
