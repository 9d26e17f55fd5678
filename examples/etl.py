"""The handlers of docs/workflows.md's tour: `bo-queue worker --import examples.etl`.

Each takes its input from its payload or, when it ran with `depends_on`, from the results
of the tasks it waited for."""

from __future__ import annotations

from typing import Any

from bo_queue import TaskContext, handler


def _rows(payload: dict[str, Any], ctx: TaskContext) -> list[int]:
    if "rows" in payload:
        return list(payload["rows"])
    upstream = ctx.dependency_results().values()
    return [row for result in upstream for row in result.get("rows", [])]


@handler("etl.extract")
def extract(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return {"day": payload.get("day"), "rows": list(range(10))}


@handler("etl.clean")
def clean(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return {"rows": [row for row in _rows(payload, ctx) if row % 3]}


@handler("etl.stats")
def stats(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    rows = _rows(payload, ctx)
    return {"count": len(rows), "total": sum(rows)}


@handler("etl.load")
def load(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    results = ctx.dependency_results()
    return {"loaded": True, "inputs": len(results) or 1}


@handler("etl.log")
def log(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    ctx.log.info("nothing to load")
    return {"logged": True}


@handler("etl.check")
def check(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Done on its third call for the same day: what a poll of an outside system sees."""
    calls = ctx.bq.redis.incr(f"{ctx.bq.keys.namespace}:example:checks:{payload.get('day')}")
    return {"done": calls >= 3, "calls": calls}
