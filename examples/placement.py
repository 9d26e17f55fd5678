"""docs/placement.md, "Where and how tasks run": capabilities, resources, cluster-wide limits,
versions and async handlers. A worker for these:
`bo-queue worker --import examples.placement --capabilities gpu --offers cpu=4,gpu=1`."""

from __future__ import annotations

import asyncio
from typing import Any

from bo_queue import BOQueue, TaskContext, handler


@handler("sim.train", requires=["gpu"], resources={"cpu": 2, "gpu": 1}, version="2")
def train(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    ctx.log.info("training %s for %d epochs", payload["model"], payload["epochs"])
    return {"model": payload["model"], "loss": 1.0 / payload["epochs"]}


@handler("vendor.quote", rate_limit="5/s", max_concurrency=2)  # across every worker
def quote(payload: dict[str, Any], ctx: TaskContext) -> float:
    return 100.0 + payload["n"]


@handler("web.fetch", time_limit=10)
async def fetch(payload: dict[str, Any], ctx: TaskContext) -> int:
    await asyncio.sleep(0.05)  # an HTTP client's await, in real life; cancellable here
    return len(payload["url"])


def placement(bq: BOQueue) -> dict[str, Any]:
    trained = bq.submit("sim.train", {"model": "resnet", "epochs": 4}, version="2")
    quotes = bq.submit_many({"handler": "vendor.quote", "payload": {"n": n}} for n in range(6))
    fetched = bq.submit("web.fetch", {"url": "https://example.org"})
    result = trained.get(timeout=60)
    info = bq.info(trained.id)  # SUCCEEDED, version "2", info.usage, info.log
    return {"train": result, "version": info.version, "queue": info.queue,
            "quotes": [h.get(timeout=60) for h in quotes], "fetched": fetched.get(timeout=60)}
