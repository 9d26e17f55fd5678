"""An asyncio producer (a FastAPI or aiohttp service's loop): `python -m
examples.async_producer` with a worker running `--import examples.reports` and
BO_QUEUE_REDIS_URL pointing at its Redis."""

from __future__ import annotations

import asyncio
import contextlib

from bo_queue import AsyncBOQueue, TaskCancelledError


async def produce(aq: AsyncBOQueue) -> dict[str, object]:
    h = await aq.submit("reports.build", {"parts": 3}, priority="high", tags=("nightly",))
    report = await h.get(timeout=60)  # awaits the result on pub/sub: the loop runs on
    parts = await asyncio.gather(*(aq.handle(i).get(timeout=60) for i in report["parts"]))

    batch = await aq.submit_many({"handler": "reports.part", "payload": {"part": i}}
                                 for i in range(20))  # one round trip to Redis
    rows = sum(r["rows"] for r in await asyncio.gather(*(x.get(timeout=60) for x in batch)))

    later = await aq.submit("reports.build", {}, countdown=600, tags=("nightly",))
    waiting = asyncio.create_task(later.get())
    cancelled = await aq.cancel_tag("nightly")
    with contextlib.suppress(TaskCancelledError):  # the waiting get() wakes with it
        await waiting
    return {"parts": list(parts), "rows": rows, "cancelled": cancelled == [later.id],
            "later": (await later.state()).value}


async def main() -> None:
    async with AsyncBOQueue.from_env() as aq:
        print(await produce(aq))


if __name__ == "__main__":
    asyncio.run(main())
