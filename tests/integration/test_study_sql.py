"""Studies in a real database, with real workers: a study run in one namespace, persisted to
SQLite and to PostgreSQL (the suite's own server, tests/integration/postgres.py), queried
with SQL, loaded into another namespace and continued there; beat's archive to a database
(BO_QUEUE_ARCHIVE_URL); the CLI's CSV export."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from bo_queue import (
    BOQueue,
    Objective,
    Range,
    SQLStorage,
    Strategy,
    StudyNotFoundError,
    StudyStatus,
    TrialStatus,
)
from bo_queue.testing import wait_until
from tests.conftest import ROOT, Cluster, make_cluster
from tests.integration.postgres import PostgresServer
from tests.unit.test_study_sql import BEST_QUERY

QUEUES = ("default", "bo")


@pytest.fixture(scope="module")
def two_clusters(redis_url: str) -> Iterator[tuple[Cluster, Cluster]]:
    """Two namespaces, each with a worker that runs study steps."""
    first = make_cluster(redis_url, workers=1, concurrency=1, queues=QUEUES)
    try:
        second = make_cluster(redis_url, workers=1, concurrency=1, queues=QUEUES)
    except BaseException:
        first.close()
        raise
    yield first, second
    first.close()
    second.close()


def loss(params: dict[str, object]) -> float:
    x, y = float(params["x"]), float(params["y"])  # type: ignore[arg-type]
    return (x - 0.3) ** 2 + (y - 0.6) ** 2


def ask_and_tell(bq: BOQueue, study_id: str, count: int) -> list[int]:
    trials = bq.studies.suggest(study_id, count=count, timeout=120)
    for trial in trials:
        bq.studies.report(study_id, trial.index, {"loss": loss(trial.params)})
    return [t.index for t in trials]


@pytest.mark.timeout(300)
def test_a_study_persisted_to_sqlite_and_postgres_continues_elsewhere(
    two_clusters: tuple[Cluster, Cluster], postgres: PostgresServer, tmp_path: Path
) -> None:
    here, there = (c.producer() for c in two_clusters)
    study = here.studies.create(
        "tune", [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)], [Objective("loss")],
        strategy=Strategy(initial_trials=4, max_trials=4, seed=0),
        description="two of four trials here, the rest elsewhere",
        metadata={"owner": "sql-test", "run": 1},
    )
    assert ask_and_tell(here, study.id, 2) == [0, 1]
    wait_until(lambda: here.studies.get(study.id).completed_trials == 2, 60,
               what="both results to be told to the model")
    pg_url, sqlite_url = postgres.new_database(), f"sqlite:///{tmp_path / 'studies.db'}"
    with SQLStorage(pg_url) as pg, SQLStorage(sqlite_url) as lite:
        here.studies.persist(study.id, pg)
        here.studies.persist(study.id, lite)
        saved = pg.load(study.id)
        assert saved == lite.load(study.id)  # both databases hold the same state
        assert saved.model is not None and len(saved.trials) == 2

        # the PostgreSQL copy goes on in another namespace, the SQLite one where it was
        loaded = there.studies.load(study.id, pg)
        assert loaded.description == study.description and loaded.metadata == study.metadata
        assert here.studies.delete(study.id)
        with pytest.raises(StudyNotFoundError):
            here.studies.get(study.id)
        here.studies.load(study.id, lite)
        first_params = [t.params for t in saved.trials]
        for bq in (there, here):
            assert ask_and_tell(bq, study.id, 2) == [2, 3]  # the model's Sobol sequence goes on
            done = bq.studies.wait(study.id, timeout=120)
            assert done.status is StudyStatus.COMPLETED and done.completed_trials == 4
            assert all(t.params not in first_params for t in bq.studies.trials(study.id)[2:])
        # resumed from the same snapshot, both copies generate the same new trials
        assert ([t.params for t in there.studies.trials(study.id)]
                == [t.params for t in here.studies.trials(study.id)])
        there.studies.persist(study.id, pg)  # the finished study replaces the saved one

    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname={pg_url.rsplit('/', 1)[1]}"
    with psycopg.connect(dsn) as conn:  # the query of docs/studies.md, in plain SQL
        rows = conn.execute(BEST_QUERY).fetchall()
        status, description, owner = conn.execute(
            "SELECT status, description, metadata->>'owner' FROM studies WHERE id = %s",
            (study.id,),
        ).fetchone() or (None, None, None)
    finished = there.studies.trials(study.id)
    assert {sid for sid, _, _ in rows} == {study.id}
    by_loss = sorted(range(4), key=lambda i: loss(finished[i].params))
    assert [index for _, index, _ in rows] == by_loss
    assert [value for _, _, value in rows] == sorted(loss(t.params) for t in finished)
    assert (status, description, owner) == ("COMPLETED", study.description, "sql-test")

    # the CLI, a process of its own, exports the trials as CSV
    out = subprocess.run(
        [sys.executable, "-m", "bo_queue.cli", "study", "export", study.id, "--format", "csv"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "BO_QUEUE_REDIS_URL": two_clusters[1].redis_url,
             "BO_QUEUE_NAMESPACE": two_clusters[1].namespace},
    )
    assert out.returncode == 0, out.stderr
    exported = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [int(r["trial"]) for r in exported] == [0, 1, 2, 3]
    assert {r["status"] for r in exported} == {TrialStatus.COMPLETED.value}
    assert [float(r["values_loss"]) for r in exported] == [loss(t.params) for t in finished]
    assert [float(r["params_x"]) for r in exported] == [t.params["x"] for t in finished]


@pytest.mark.timeout(120)
def test_first_users_of_a_new_postgres_database_migrate_it_once(postgres: PostgresServer) -> None:
    url = postgres.new_database()

    def first_use(_: int) -> list[str]:
        with SQLStorage(url) as backend:  # each its own engine and connections
            return backend.list()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(first_use, range(4))) == [[]] * 4


@pytest.mark.timeout(120)
def test_beat_archives_finished_studies_to_a_database(
    redis_url: str, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    cluster = make_cluster(redis_url, workers=1, concurrency=1, archive_url=url)
    try:
        bq = cluster.producer()
        done = bq.studies.create("old", [Range("x", 0.0, 1.0)], [Objective("loss")],
                                 metadata={"archived": True})
        bq.studies.fail(done.id, "given up")
        live = bq.studies.create("live", [Range("x", 0.0, 1.0)], [Objective("loss")])
        archived = bq.submit("bo_queue.maintenance.archive_studies",
                             {"older_than_days": 0}).get(timeout=60)
        assert archived == [done.id]
        assert {s.id for s in bq.studies.list()} == {live.id}
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT status, message FROM studies")).one()
        engine.dispose()
        assert tuple(row) == ("FAILED", "given up")
        with SQLStorage(url) as database:
            restored = bq.studies.load(done.id, database)
        assert restored.status == "FAILED" and restored.metadata == {"archived": True}
    finally:
        cluster.close()
