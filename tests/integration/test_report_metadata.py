"""A reported result keeps its metadata and the time it was reported, in Python and over
a real `bo-queue api`; cloning and warm start over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from bo_queue import (
    BOQueue,
    Objective,
    Range,
    ReportConflictError,
    Strategy,
    TrialStatus,
    ValidationError,
)
from bo_queue.testing import wait_until
from tests.conftest import Cluster, make_cluster
from tests.integration.api_server import api_client

SPACE = [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)]
LOSS = [Objective("loss")]
SOBOL = Strategy(initial_trials=6, max_trials=6, seed=0)  # quasi-random only: quick steps


@pytest.fixture(scope="module")
def meta_cluster(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=1, concurrency=2, queues=("default", "bo"))
    yield c
    c.close()


@pytest.fixture
def bq(meta_cluster: Cluster) -> BOQueue:
    return meta_cluster.producer()


def completed(bq: BOQueue, study_id: str, index: int) -> None:
    wait_until(lambda: bq.studies.trial(study_id, index).status is TrialStatus.COMPLETED,
               30, 0.05, f"trial {index} to be COMPLETED")


def test_report_keeps_metadata_and_time_and_stays_idempotent(bq: BOQueue) -> None:
    study = bq.studies.create(name="meta", parameters=SPACE, objectives=LOSS, strategy=SOBOL)
    first, second, third = bq.studies.suggest(study.id, 3)
    before = datetime.now(UTC)
    assert bq.studies.report(study.id, first.index, {"loss": 0.5}, metadata={"host": "gpu-3"})
    after = datetime.now(UTC)
    # the same result again is a no-op; other metadata, or none, is another result
    assert not bq.studies.report(study.id, first.index, {"loss": 0.5}, metadata={"host": "gpu-3"})
    with pytest.raises(ReportConflictError):
        bq.studies.report(study.id, first.index, {"loss": 0.5}, metadata={"host": "gpu-4"})
    with pytest.raises(ReportConflictError):
        bq.studies.report(study.id, first.index, {"loss": 0.5})
    completed(bq, study.id, first.index)
    kept = bq.studies.trial(study.id, first.index)
    assert kept.result_metadata == {"host": "gpu-3"} and kept.values == {"loss": 0.5}
    assert kept.reported_at is not None and before <= kept.reported_at <= after

    # bad metadata: a clear error, and nothing told (the trial still takes a result)
    for bad, message in (([1, 2], "mapping"), ({"blob": "x" * 70_000}, "limit"),
                         ({"f": float("nan")}, "JSON")):
        with pytest.raises(ValidationError, match=message):
            bq.studies.report(study.id, second.index, {"loss": 0.1}, metadata=bad)
    assert bq.studies.trial(study.id, second.index).status is TrialStatus.RUNNING
    assert bq.studies.report(study.id, second.index, {"loss": 0.1})
    completed(bq, study.id, second.index)
    assert bq.studies.trial(study.id, second.index).result_metadata is None
    assert bq.studies.trial(study.id, second.index).reported_at is not None

    assert bq.studies.add_results(study.id, [(third.index, {"loss": 0.2}, {"run": 7})]) == 1
    assert bq.studies.add_results(study.id, [(third.index, {"loss": 0.2}, {"run": 7})]) == 0
    completed(bq, study.id, third.index)
    assert bq.studies.trial(study.id, third.index).result_metadata == {"run": 7}


def test_report_metadata_clone_and_warm_start_over_http(
    redis_url: str, meta_cluster: Cluster
) -> None:
    bq = meta_cluster.producer()
    source = bq.studies.create(name="http-source", parameters=SPACE, objectives=LOSS,
                               strategy=SOBOL, description="d", metadata={"m": 1})
    with api_client(redis_url, meta_cluster.namespace, "warmstart") as http:
        trial = bq.studies.suggest(source.id, 1)[0]
        path = f"/studies/{source.id}/trials/{trial.index}/report"
        bad = http.post(path, json={"values": {"loss": 0.25}, "metadata": "not an object"})
        assert bad.status_code == 422, bad.text
        body = {"values": {"loss": 0.25}, "metadata": {"host": "h1"}}
        assert http.post(path, json=body).json()["recorded"] is True
        assert http.post(path, json=body).json()["recorded"] is False
        completed(bq, source.id, trial.index)
        shown = http.get(f"/studies/{source.id}/trials/{trial.index}").json()
        assert shown["result_metadata"] == {"host": "h1"} and shown["reported_at"]

        missing = http.post(f"/studies/{'0' * 16}/clone", json={})
        assert missing.status_code == 404, missing.text
        unknown = http.post(f"/studies/{source.id}/clone", json={"budget": 3})
        assert unknown.status_code == 422, unknown.text
        cloned = http.post(f"/studies/{source.id}/clone", json={
            "name": "http-clone", "strategy": {"initial_trials": 2, "max_trials": 3, "seed": 5},
        })
        assert cloned.status_code == 201, cloned.text
        clone = cloned.json()
        assert clone["status"] == "CREATED" and clone["warm_start_from"] == [source.id]
        assert clone["spec"]["name"] == "http-clone"
        assert clone["spec"]["strategy"]["max_trials"] == 3
        assert (clone["description"], clone["metadata"]) == ("d", {"m": 1})

        spec = source.spec.model_dump(mode="json")
        refused = http.post("/studies", json={**spec, "warm_start_from": ["0" * 16]})
        assert refused.status_code == 404, refused.text
        warm = http.post("/studies", json={**spec, "warm_start_from": [source.id]})
        assert warm.status_code == 201, warm.text
        warm_id = warm.json()["id"]
        suggested = http.post(f"/studies/{warm_id}/suggest", params={"count": 1})
        assert suggested.status_code == 200, suggested.text
        trials = http.get(f"/studies/{warm_id}/trials").json()
        attached = [t for t in trials if t["generator"] == "warm-start"]
        assert [t["params"] for t in attached] == [trial.params]
        assert attached[0]["values"] == {"loss": 0.25} and attached[0]["status"] == "COMPLETED"
        assert suggested.json()[0]["index"] == 1
