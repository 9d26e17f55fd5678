"""SQLStorage: studies kept in a relational database (SQLite, PostgreSQL, any database
SQLAlchemy 2 drives), in tables a person can query with SQL.

    studies              one row per study: its record, the spec as JSON, description, metadata
    trials               one row per trial (study_id, trial_index): status, params (JSON), times
    trial_values         one row per reported metric: mean and sem (NULL: reported without one)
    intermediate_values  (study_id, trial_index, metric, step, value): the trials' curves
                         (report_intermediate; the mean of a value reported with a sem)
    snapshots            the Ax model at each saved iteration (zlib-compressed JSON)

The schema is versioned with Alembic (the alembic_version table); the migrations in
sql_migrations/ run on first use. A save is one transaction: a save that fails leaves the
version saved before it whole.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    import sqlalchemy as sa
except ImportError as missing:  # an optional extra
    raise ImportError("SQLStorage needs the sql extra: pip install 'bo-queue[sql]'") from missing
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect

from bo_queue.errors import (
    ConfigurationError,
    StorageError,
    StudyNotFoundError,
    ValidationError,
    shown,
)
from bo_queue.studies.models import Outcome, Study, StudySpec, Trial, mean
from bo_queue.studies.storage import StorageBackend, StudyState, valid_id

MIGRATIONS = Path(__file__).with_name("sql_migrations")
MIGRATION_LOCK = 0x62715F7371  # PostgreSQL advisory lock held while migrating ("bq_sq")
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a server that does not answer is an error, not a hang
_MIGRATING = threading.Lock()  # Alembic's context is one global: one upgrade at a time


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out (SQLite keeps no zone: its values are read as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

studies = sa.Table(
    "studies", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("iteration", sa.Integer, nullable=False),
    sa.Column("completed_trials", sa.Integer, nullable=False),
    sa.Column("failed_trials", sa.Integer, nullable=False),
    sa.Column("running_trials", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("saved_at", UTCDateTime, nullable=False),
    sa.Column("early_stopped_trials", sa.Integer, nullable=False, server_default="0"),  # 0002
    sa.Column("warm_start_from", sa.JSON, nullable=False, server_default="[]"),  # 0002
)

trials = sa.Table(
    "trials", metadata,
    sa.Column("study_id", sa.String(128), sa.ForeignKey("studies.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("trial_index", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("generator", sa.Text, nullable=False),
    sa.Column("task_id", sa.Text),
    sa.Column("worker", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("leased_until", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("error", sa.Text),
    sa.Column("reported_at", UTCDateTime),  # 0002
    sa.Column("result_metadata", sa.JSON),  # 0002
)

def _trial_key() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["study_id", "trial_index"], ["trials.study_id", "trials.trial_index"],
        ondelete="CASCADE",
    )

trial_values = sa.Table(
    "trial_values", metadata,
    sa.Column("study_id", sa.String(128), primary_key=True),
    sa.Column("trial_index", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("mean", sa.Float, nullable=False),
    sa.Column("sem", sa.Float),
    _trial_key(),
)

intermediate_values = sa.Table(
    "intermediate_values", metadata,
    sa.Column("study_id", sa.String(128), primary_key=True),
    sa.Column("trial_index", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("value", sa.Float, nullable=False),
    _trial_key(),
)

snapshots = sa.Table(
    "snapshots", metadata,
    sa.Column("study_id", sa.String(128), sa.ForeignKey("studies.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("iteration", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("model", sa.LargeBinary, nullable=False),
    sa.Column("saved_at", UTCDateTime, nullable=False),
)


class SQLStorage(StorageBackend):
    """Studies in the database at `url`, a SQLAlchemy URL: `sqlite:///studies.db` (a
    file, no server) or `postgresql+psycopg://user:password@host/dbname`. Snapshots of
    earlier iterations are kept (as FileStorage's models/history); everything else is the
    state last saved."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        try:
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "postgresql":
                engine_options.setdefault("connect_args", {"connect_timeout": CONNECT_TIMEOUT_S})
            self.engine = sa.create_engine(parsed, pool_pre_ping=True, **engine_options)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"{shown(url)} is not a database URL SQLAlchemy can use: {exc}"
            ) from None
        self.url = parsed.render_as_string(hide_password=True)
        self._migrated = False

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SQLStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLStorage({self.url!r})"

    # the StorageBackend interface
    def save(self, state: StudyState) -> None:
        study = state.study
        if not valid_id(study.id):
            raise ValidationError(f"cannot store a study with the id {shown(study.id)}")
        now = datetime.now(UTC)
        with self._transaction() as conn:
            row = _study_row(study, now)
            if not conn.execute(studies.update().where(studies.c.id == study.id), row).rowcount:
                conn.execute(studies.insert(), row)
            _remove_trials(conn, study.id)
            conn.execute(snapshots.delete().where(
                snapshots.c.study_id == study.id, snapshots.c.iteration == study.iteration
            ))
            if state.trials:
                conn.execute(trials.insert(), [_trial_row(study.id, t) for t in state.trials])
            values = [row for t in state.trials for row in _value_rows(study.id, t)]
            if values:
                conn.execute(trial_values.insert(), values)
            known = {t.index for t in state.trials}
            points = [
                {"study_id": study.id, "trial_index": index, "metric": metric, "step": step,
                 "value": mean(value)}
                for index, curve in state.curves.items() if index in known
                for step, point in curve for metric, value in point.items()
            ]
            if points:
                conn.execute(intermediate_values.insert(), points)
            if state.model is not None:
                conn.execute(snapshots.insert(), {
                    "study_id": study.id, "iteration": study.iteration,
                    "model": state.model, "saved_at": now,
                })

    def load(self, study_id: str) -> StudyState:
        if not valid_id(study_id):
            raise StudyNotFoundError(study_id if isinstance(study_id, str) else shown(study_id))
        with self._transaction() as conn:  # one read: a save in between is all or nothing
            row = conn.execute(
                sa.select(studies).where(studies.c.id == study_id)
            ).mappings().first()
            if row is None:
                raise StudyNotFoundError(study_id)
            study = _study(row)
            outcomes: dict[int, dict[str, Any]] = {}
            for v in conn.execute(
                sa.select(trial_values).where(trial_values.c.study_id == study_id)
            ).mappings():
                mean, sem = v["mean"], v["sem"]
                outcomes.setdefault(v["trial_index"], {})[v["metric"]] = (
                    mean if sem is None else (mean, sem)
                )
            found = [
                _trial(t, outcomes.get(t["trial_index"]))
                for t in conn.execute(
                    sa.select(trials).where(trials.c.study_id == study_id)
                    .order_by(trials.c.trial_index)
                ).mappings()
            ]
            curves: dict[int, dict[int, dict[str, Outcome]]] = {}
            for p in conn.execute(
                sa.select(intermediate_values).where(intermediate_values.c.study_id == study_id)
            ).mappings():
                at = curves.setdefault(p["trial_index"], {}).setdefault(p["step"], {})
                at[p["metric"]] = p["value"]
            model = conn.execute(sa.select(snapshots.c.model).where(
                snapshots.c.study_id == study_id, snapshots.c.iteration == study.iteration
            )).scalar()
        return StudyState(
            study, found,
            None if model is None else bytes(model),
            {index: sorted(steps.items()) for index, steps in curves.items()},
        )

    def list(self) -> builtins.list[str]:
        with self._transaction() as conn:
            ids = sa.select(studies.c.id).order_by(studies.c.created_at, studies.c.id)
            return [str(i) for i in conn.execute(ids).scalars()]

    def delete(self, study_id: str) -> bool:
        if not valid_id(study_id):
            return False  # no study can have it
        with self._transaction() as conn:
            _remove_trials(conn, study_id)
            conn.execute(snapshots.delete().where(snapshots.c.study_id == study_id))
            return bool(conn.execute(studies.delete().where(studies.c.id == study_id)).rowcount)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A connection in one transaction, the schema migrated first: committed at the end,
        rolled back on any error; the database's errors as StorageError."""
        self._migrate()
        with self._errors(), self.engine.begin() as conn:
            yield conn

    def _migrate(self) -> None:
        if self._migrated:
            return
        from alembic import command
        from alembic.config import Config
        from alembic.util.exc import CommandError

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with _MIGRATING, self._errors(), self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":  # first users in other processes
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": MIGRATION_LOCK})
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except CommandError as exc:  # a schema this bo_queue does not know (a newer one)
            raise StorageError(f"cannot migrate the study database {self.url}: {exc}") from None
        self._migrated = True

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StorageError(
                f"the study database {self.url} failed ({type(cause).__name__}: "
                f"{str(cause).strip().splitlines()[0] if str(cause).strip() else 'no message'}); "
                "nothing was written"
            ) from exc


def _remove_trials(conn: Connection, study_id: str) -> None:
    """A study's trials and their values (children first: SQLite enforces no cascade)."""
    for table in (intermediate_values, trial_values, trials):
        conn.execute(table.delete().where(table.c.study_id == study_id))


def _study_row(study: Study, now: datetime) -> dict[str, Any]:
    return {
        "id": study.id, "name": study.name, "status": study.status.value,
        "message": study.message, "description": study.description,
        "metadata": study.metadata, "spec": study.spec.model_dump(mode="json"),
        "mode": study.mode, "iteration": study.iteration,
        "completed_trials": study.completed_trials, "failed_trials": study.failed_trials,
        "running_trials": study.running_trials, "created_at": study.created_at,
        "updated_at": study.updated_at, "saved_at": now,
        "early_stopped_trials": study.early_stopped_trials,
        "warm_start_from": study.warm_start_from,
    }


def _study(row: sa.RowMapping) -> Study:
    fields = {k: row[k] for k in row.keys() if k not in ("name", "saved_at")}  # noqa: SIM118
    fields["spec"] = StudySpec.model_validate(row["spec"])
    return Study.model_validate(fields)


def _trial_row(study_id: str, trial: Trial) -> dict[str, Any]:
    row = trial.model_dump(mode="python", exclude={"index", "values"})
    row.update(study_id=study_id, trial_index=trial.index, status=trial.status.value)
    return row


def _value_rows(study_id: str, trial: Trial) -> builtins.list[dict[str, Any]]:
    return [
        {"study_id": study_id, "trial_index": trial.index, "metric": metric,
         "mean": value[0] if isinstance(value, tuple) else value,
         "sem": value[1] if isinstance(value, tuple) else None}
        for metric, value in (trial.values or {}).items()
    ]


def _trial(row: sa.RowMapping, values: dict[str, Any] | None) -> Trial:
    fields = {k: row[k] for k in row.keys() if k not in ("study_id", "trial_index")}  # noqa: SIM118
    return Trial.model_validate({**fields, "index": row["trial_index"], "values": values})
