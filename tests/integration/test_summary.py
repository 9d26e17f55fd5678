"""bq.summary() and the namespace metadata on real workers and a real Redis, and both over
HTTP through a real `bo-queue api` process."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from bo_queue import BOQueue, TaskState, ValidationError
from bo_queue.monitor.metadata import METADATA_LIMIT_BYTES
from bo_queue.testing import wait_until
from tests.integration.api_server import ApiServer

CLUSTER = {"workers": 1}  # tests/conftest.py's `cluster`


def test_summary_counts_what_two_handlers_ran(bq: BOQueue) -> None:
    never = f"evidence:never:{uuid.uuid4().hex}"  # never set: those tasks fail
    handles = bq.submit_many(
        [{"handler": "t.echo", "payload": {"i": i}} for i in range(4)]
        + [{"handler": "t.fail_until_fixed", "payload": {"fixed": never}} for _ in range(2)]
    )

    def ended(task_id: str) -> bool:
        record = bq.records.get(task_id)
        return record is not None and record.state.terminal

    for handle in handles:
        wait_until(lambda h=handle: ended(h.id), 60, what="every task to end")
    summary = bq.summary()
    assert summary.total == 6
    assert summary.by_state == {**{s.value: 0 for s in TaskState},
                                "SUCCEEDED": 4, "FAILED": 2}
    assert summary.by_handler == {"t.echo": {"SUCCEEDED": 4},
                                  "t.fail_until_fixed": {"FAILED": 2}}


def test_metadata_on_a_real_redis(bq: BOQueue) -> None:
    first = bq.update_metadata({"owner": "lab", "rounds": 3})
    again = bq.update_metadata({"rounds": 4, "notes": {"a": [1, None]}})
    assert again["initialized_at"] == first["initialized_at"]
    assert (again["owner"], again["rounds"], again["notes"]) == ("lab", 4, {"a": [1, None]})
    with pytest.raises(ValidationError):
        bq.update_metadata({"big": "x" * METADATA_LIMIT_BYTES})
    assert bq.metadata() == again


def test_concurrent_metadata_updates_all_land(bq: BOQueue) -> None:
    def update(i: int) -> None:
        with BOQueue(redis_url=bq.settings.redis_url,
                     namespace=bq.settings.namespace) as other:  # a client of its own
            other.update_metadata({f"writer{i}": i, "last_writer": i})

    threads = [threading.Thread(target=update, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    merged = bq.metadata()
    assert all(merged[f"writer{i}"] == i for i in range(8))
    assert merged["last_writer"] in range(8)


def test_summary_and_metadata_over_http(api: ApiServer, client: httpx.Client,
                                        bq: BOQueue) -> None:
    summary = client.get("/summary").json()
    assert summary["total"] == bq.summary().total
    assert set(summary["by_state"]) == {s.value for s in TaskState}
    merged = client.patch("/metadata", json={"stage": "http"}).json()
    assert merged["stage"] == "http" and "last_updated" in merged
    assert client.get("/metadata").json() == merged
    for bad in ([1], {"": 1}, {"initialized_at": 1}, {"big": "x" * METADATA_LIMIT_BYTES}):
        response = client.patch("/metadata", json=bad)
        assert response.status_code in (413, 422), response.text
        assert set(response.json()) == {"error", "detail"}
    assert client.get("/metadata").json() == merged
    assert httpx.get(api.url + "/summary").status_code == 401  # a key is needed
    schema = httpx.get(api.url + "/openapi.json").json()
    assert {"/summary", "/metadata"} <= set(schema["paths"])
