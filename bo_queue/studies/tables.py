"""A study's trials as a table, one row per trial: what `bq.studies.dataframe()` and
`bq.studies.export(format="csv")` give (flat columns, as a spreadsheet or pandas wants)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from bo_queue.studies.models import StudySpec, Trial

FIXED = ["trial", "status", "batch", "generator", "worker", "task_id",
         "created_at", "finished_at", "error"]


def trial_rows(spec: StudySpec, trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """params_<name> for each parameter, values_<metric> for each metric (its mean),
    sem_<metric> where one was reported with a sem; None where a trial has no value."""
    rows = []
    for trial in trials:
        row: dict[str, Any] = {
            "trial": trial.index, "status": trial.status.value, "batch": trial.batch,
            "generator": trial.generator, "worker": trial.worker, "task_id": trial.task_id,
            "created_at": trial.created_at.isoformat(),
            "finished_at": trial.finished_at.isoformat() if trial.finished_at else None,
            "error": trial.error,
        }
        row.update({f"params_{p.name}": trial.params.get(p.name) for p in spec.parameters})
        for metric in spec.metric_names:
            value = (trial.values or {}).get(metric)
            row[f"values_{metric}"] = value[0] if isinstance(value, tuple) else value
            if isinstance(value, tuple):
                row[f"sem_{metric}"] = value[1]
        rows.append(row)
    return rows


def columns(spec: StudySpec, rows: list[dict[str, Any]]) -> list[str]:
    """The columns in a stable order: fixed ones, params, values, then the sems there are."""
    sems = {key for row in rows for key in row if key.startswith("sem_")}
    return (FIXED + [f"params_{p.name}" for p in spec.parameters]
            + [f"values_{m}" for m in spec.metric_names]
            + [f"sem_{m}" for m in spec.metric_names if f"sem_{m}" in sems])


def csv_text(spec: StudySpec, rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(spec, rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
