"""SQLStorage on SQLite files (no server; tests/integration/test_study_sql.py runs it on
PostgreSQL with real workers), a study's description and metadata, and its trials as a
table (dataframe, CSV)."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bo_queue import BOQueue
from bo_queue.errors import ConfigurationError, StorageError, StudyNotFoundError, ValidationError
from bo_queue.studies import sql
from bo_queue.studies.models import Objective, Range, StudyStatus, TrialStatus
from bo_queue.studies.sql import SQLStorage
from bo_queue.studies.storage import StudyState
from bo_queue.testing import free_port
from tests.unit.test_study_storage import MODEL, full_state, make_study, make_trial

# The query docs/studies.md shows: the best completed trials of every study named "tune".
BEST_QUERY = """
SELECT s.id, t.trial_index, v.mean AS loss
FROM studies s
JOIN trials t ON t.study_id = s.id
JOIN trial_values v ON v.study_id = t.study_id AND v.trial_index = t.trial_index
WHERE s.name = 'tune' AND t.status = 'COMPLETED' AND v.metric = 'loss'
ORDER BY v.mean
"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def storage(url: str) -> Iterator[SQLStorage]:
    with SQLStorage(url) as backend:
        yield backend


def described(study_id: str = "s1") -> StudyState:
    state = full_state(study_id)
    study = state.study.model_copy(update={
        "description": "tuning the booster, März", "metadata": {"owner": "ml", "tags": [1, 2]},
        "warm_start_from": ["s0"], "early_stopped_trials": 0,
    })
    first, *rest = state.trials
    reported = first.model_copy(update={  # what report(metadata=) keeps on a trial
        "reported_at": first.finished_at, "result_metadata": {"rig": "B2", "runs": [1, 2]},
    })
    return StudyState(study, [reported, *rest], state.model)


def test_a_study_round_trips_with_every_trial(storage: SQLStorage) -> None:
    state = described()
    storage.save(state)
    back = storage.load("s1")
    assert back.study == state.study
    assert back.study.description == "tuning the booster, März"
    assert back.study.metadata == {"owner": "ml", "tags": [1, 2]}
    assert back.trials == state.trials  # params' types, (mean, sem), times to the microsecond
    assert back.trials[0].result_metadata == {"rig": "B2", "runs": [1, 2]}
    assert back.study.warm_start_from == ["s0"]
    assert back.model == MODEL
    assert storage.list() == ["s1"]


def test_the_tables_answer_sql(storage: SQLStorage, url: str, tmp_path: Path) -> None:
    storage.save(full_state("s1"))
    storage.save(full_state("s2"))
    with sqlite3.connect(tmp_path / "studies.db") as conn:  # plain SQL, no bo_queue
        rows = conn.execute(BEST_QUERY).fetchall()
        sems = conn.execute("SELECT sem FROM trial_values WHERE metric = 'loss' "
                            "AND trial_index = 1").fetchall()
        params = conn.execute("SELECT json_extract(params, '$.depth') FROM trials "
                              "WHERE study_id = 's1' ORDER BY trial_index").fetchall()
    conn.close()
    assert sorted(rows) == [("s1", 0, 0.5), ("s1", 1, 0.25), ("s2", 0, 0.5), ("s2", 1, 0.25)]
    assert rows[0][2] == 0.25
    assert sems == [(0.1,), (0.1,)]
    assert params == [(3,), (4,), (5,), (6,)]


def test_a_save_replaces_the_state_and_keeps_earlier_snapshots(
    storage: SQLStorage, tmp_path: Path
) -> None:
    first = full_state()
    storage.save(first)
    later = StudyState(
        first.study.model_copy(update={"iteration": 3, "status": StudyStatus.COMPLETED}),
        first.trials[:2], b"newer model",
    )
    storage.save(later)
    back = storage.load("s1")
    assert back.study.status is StudyStatus.COMPLETED and back.trials == first.trials[:2]
    assert back.model == b"newer model"
    with sqlite3.connect(tmp_path / "studies.db") as conn:
        kept = conn.execute("SELECT iteration FROM snapshots ORDER BY iteration").fetchall()
        left = conn.execute("SELECT count(*) FROM trials").fetchone()
    conn.close()
    assert kept == [(2,), (3,)] and left == (2,)
    without = StudyState(later.study.model_copy(update={"iteration": 4}), later.trials, None)
    storage.save(without)
    assert storage.load("s1").model is None  # not the snapshot of an earlier iteration


def test_a_failed_save_leaves_the_previous_version_whole(storage: SQLStorage) -> None:
    state = described()
    storage.save(state)
    broken = StudyState(
        state.study.model_copy(update={"description": "half-written?", "iteration": 5}),
        [make_trial(0), make_trial(0, TrialStatus.COMPLETED, values={"loss": 1.0, "mem": 1.0})],
        b"another model",
    )  # the same trial twice: the database refuses the second row
    with pytest.raises(StorageError, match="nothing was written"):
        storage.save(broken)
    back = storage.load("s1")
    assert (back.study, back.trials, back.model) == (state.study, state.trials, state.model)
    with pytest.raises(StorageError):
        storage.save(StudyState(make_study("s2"), broken.trials))
    assert storage.list() == ["s1"]  # a new study that failed is not there at all


def test_delete_removes_every_row(storage: SQLStorage, tmp_path: Path) -> None:
    storage.save(full_state("s1"))
    storage.save(full_state("s2"))
    assert storage.delete("s1") is True
    assert storage.delete("s1") is False
    assert storage.delete("../x") is False
    with sqlite3.connect(tmp_path / "studies.db") as conn:
        counts = [conn.execute(f"SELECT count(DISTINCT study_id) FROM {t}").fetchone()
                  for t in ("trials", "trial_values", "snapshots")]
    conn.close()
    assert counts == [(1,), (1,), (1,)]
    assert storage.list() == ["s2"]


def test_an_unknown_study_is_not_found(storage: SQLStorage) -> None:
    with pytest.raises(StudyNotFoundError):
        storage.load("nope")
    with pytest.raises(StudyNotFoundError):
        storage.load("a:b")
    with pytest.raises(ValidationError):
        storage.save(StudyState(make_study("a:b")))


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/x", "", "sqlite+nodriver:///x"])
def test_a_url_that_does_not_parse_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="not a database URL"):
        SQLStorage(url)


def test_a_database_that_is_down_is_a_storage_error(tmp_path: Path) -> None:
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/studies"
    with SQLStorage(down) as backend, pytest.raises(StorageError, match=r"127\.0\.0\.1"):
        backend.list()
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}"
    with SQLStorage(missing) as backend, pytest.raises(StorageError, match="OperationalError"):
        backend.save(full_state())
    assert not (tmp_path / "no").exists()


def test_the_schema_is_migrated_and_matches_the_tables(storage: SQLStorage) -> None:
    storage.list()  # first use: Alembic's upgrade to head
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        drift = compare_metadata(MigrationContext.configure(conn), sql.metadata)
    assert drift == []  # the migrations build exactly the tables sql.py declares


def test_a_database_of_the_first_schema_is_upgraded_with_its_studies(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    old, stopped = make_study("old"), make_trial(1, TrialStatus.EARLY_STOPPED, values={"loss": 0.9})
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(sql.MIGRATIONS))
    with engine.begin() as conn:  # the first schema, and a study as bo_queue wrote it then
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        study = {k: v for k, v in sql._study_row(old, old.created_at).items()
                 if k not in ("early_stopped_trials", "warm_start_from")}
        conn.execute(sql.studies.insert(), study)  # only 0001's columns
        trial = {k: v for k, v in sql._trial_row("old", stopped).items()
                 if k not in ("reported_at", "result_metadata")}
        conn.execute(sql.trials.insert(), trial)
    engine.dispose()
    with SQLStorage(url) as again:  # its first use upgrades 0001 to 0002
        back = again.load("old")
    assert back.study.early_stopped_trials == 1 and back.study.warm_start_from == []
    assert back.study.spec == old.spec
    assert back.trials[0].status is TrialStatus.EARLY_STOPPED
    assert back.trials[0].params == stopped.params and back.trials[0].result_metadata is None


def test_threads_that_first_use_a_new_database_migrate_it_once(url: str) -> None:
    def first_use(_: int) -> list[str]:
        with SQLStorage(url) as backend:
            return backend.list()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(first_use, range(4))) == [[]] * 4


def test_a_newer_schema_is_refused(url: str) -> None:
    with SQLStorage(url) as backend:
        backend.list()
        with backend.engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with SQLStorage(url) as again, pytest.raises(StorageError, match="cannot migrate"):
        again.list()


def test_persist_and_load_through_the_manager(bq: BOQueue, storage: SQLStorage) -> None:
    study = bq.studies.create("tune", [Range("x", 0.0, 1.0)], [Objective("loss")],
                              description="the first", metadata={"team": "a"})
    assert bq.studies.get(study.id).description == "the first"
    bq.studies.persist(study.id, storage)
    assert bq.studies.delete(study.id)
    back = bq.studies.load(study.id, storage)
    assert back == study and back.metadata == {"team": "a"}
    with pytest.raises(StudyNotFoundError):
        bq.studies.persist("nope", storage)


@pytest.mark.parametrize(("description", "metadata"), [
    (7, None), ("x" * 10_001, None), ("\ud800", None), ("", []), ("", {1: "a"}),
    ("", {"x": float("nan")}), ("", {"x": b"bytes"}), ("", {"big": "x" * 70_000}),
])
def test_bad_descriptions_and_metadata_are_refused(
    bq: BOQueue, description: object, metadata: object
) -> None:
    with pytest.raises(ValidationError):
        bq.studies.create("tune", [Range("x", 0.0, 1.0)], [Objective("loss")],
                          description=description, metadata=metadata)  # type: ignore[arg-type]
    assert bq.studies.list() == []


def test_trials_as_a_dataframe_and_as_csv(bq: BOQueue) -> None:
    state = full_state()
    bq.studies.store.save(state)
    frame = bq.studies.dataframe("s1")
    assert list(frame["trial"]) == [0, 1, 2, 3]
    assert list(frame.columns[-5:]) == [
        "params_x", "params_booster", "values_loss", "values_mem", "sem_loss",
    ]
    assert frame.loc[1, "values_loss"] == 0.25 and frame.loc[1, "sem_loss"] == 0.1
    assert frame.loc[2, "status"] == "FAILED" and frame.loc[2, "error"] == "boom"
    text = bq.studies.export("s1", format="csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["params_depth"] == "3" and rows[0]["values_loss"] == "0.5"
    assert rows[0]["sem_loss"] == "" and rows[1]["sem_loss"] == "0.1"
    with pytest.raises(ValidationError, match="format"):
        bq.studies.export("s1", format="xml")  # type: ignore[call-overload]
    with pytest.raises(StudyNotFoundError):
        bq.studies.export("nope", format="csv")
