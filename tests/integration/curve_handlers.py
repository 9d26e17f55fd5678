"""Evaluators with learning curves, for tests/integration/test_early_stopping.py: each
reports its loss step by step and stops when told. Evidence goes to Redis under
`evidence:curves:*`."""

from __future__ import annotations

import time
from typing import Any

from bo_queue import TaskContext, handler
from tests.integration.handlers import evidence

STOPPED_RESULT = -100.0  # what a stopped evaluation returns: it must not reach its trial


@handler("es.curve", queue="evaluate")
def curve(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """loss(step) = x + 1 / (step + 1): lower x is better at every step. Reports through
    ctx.report_intermediate, or through ctx.bq.studies when options say "via": "bq"."""
    options, x = payload["options"], float(payload["params"]["x"])
    study_id, index = payload["study_id"], payload["trial_index"]
    values: dict[str, float] = {}
    for step in range(options["steps"]):
        values = {"loss": x + 1.0 / (step + 1)}
        if options.get("via") == "bq":
            stop = ctx.bq.studies.report_intermediate(study_id, index, step, values)
        else:
            stop = ctx.report_intermediate(step, values)
        if stop:
            # the decision cancelled this task already: ctx.cancelled says so at once
            evidence().hset(f"evidence:curves:{study_id}", str(index), f"{step} {ctx.cancelled}")
            return {"loss": STOPPED_RESULT}
        time.sleep(options.get("sleep_s", 0))
    return values
