"""Workflows this product ships: evaluate a batch of parameter sets and report them to a
study; and the nightly run of a study, then its export and its archive.

Both are ordinary definitions built with the builder; their steps are built-in handlers
every worker runs (workers/workflows.py) and the study's evaluator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bo_queue.workflows.conditions import ref
from bo_queue.workflows.models import Step, Workflow


def evaluate_and_report(
    study_id: str, parameter_sets: Sequence[Mapping[str, Any]], evaluator: str,
    options: Mapping[str, Any] | None = None,
) -> Workflow:
    """Add the parameter sets to the study as trials, evaluate them side by side with the
    `evaluator` handler, then report every result to the study in one step.

    The evaluator gets {study_id, params, options}: a closed loop's evaluation payload
    without `trial_index` (the results reach the study in the report step; these tasks
    are not marked as evaluations, so none reports on its own)."""
    evaluations = [
        Step(f"evaluate_{i}", evaluator, {
            "study_id": study_id, "params": ref(f"attach.{i}.params"),
            "options": dict(options or {}),
        })
        for i in range(len(parameter_sets))
    ]
    return (
        Workflow(f"evaluate {len(parameter_sets)} points for study {study_id}")
        .step("attach", "bo_queue.study.attach",
              {"study_id": study_id, "points": [dict(p) for p in parameter_sets]})
        .parallel("evaluate", evaluations)
        .step("report", "bo_queue.study.report_batch",
              {"study_id": study_id, "trials": ref("attach"), "results": ref("evaluate")})
    )


def nightly_study(
    study: Mapping[str, Any] | str, export_dir: str, archive_dir: str, *,
    poll_s: float = 30.0, max_polls: int = 2880,
) -> Workflow:
    """Run a study (a new one from the StudySpec template `study`, or the study with that
    id) to its end, checking every `poll_s` seconds, then export it as JSON into
    `export_dir` and archive it (File backend under `archive_dir`, removed from Redis).
    Schedule it with `bq.schedules.add(..., "bo_queue.workflow.start",
    {"workflow": nightly_study(...).spec().model_dump(mode="json")}, cron="0 2 * * *")`."""
    target = {"study_id": study} if isinstance(study, str) else {"study": dict(study)}
    study_id = ref("start.study_id")
    watch = (
        Workflow()
        .wait(seconds=poll_s, name="pause")
        .step("check", "bo_queue.study.status", {"study_id": study_id})
    )
    return (
        Workflow("nightly study")
        .step("start", "bo_queue.study.start", target)
        .loop("watch", watch, until="check.ended == true", max_iterations=max_polls)
        .when("check.ended == true",
              then=Workflow()
              .step("export", "bo_queue.study.export", {"study_id": study_id, "dir": export_dir})
              .step("archive", "bo_queue.study.archive",
                    {"study_id": study_id, "root": archive_dir}),
              name="finished")
    )
