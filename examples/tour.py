"""The README's producer tour, runnable: `python -m examples.tour` with a worker running
`--import examples.reports` and BO_QUEUE_REDIS_URL pointing at its Redis."""

from __future__ import annotations

import contextlib

from bo_queue import BOQueue, Priority, TaskCancelledError


def tour(bq: BOQueue) -> dict[str, object]:
    h = bq.submit("reports.build", {"parts": 5}, priority=Priority.HIGH,
                  tags=("nightly",), expires=3600)
    done: list[object] = []
    h.then(done.append, done.append)  # callbacks run in this process
    report = h.get(timeout=60)
    parts = [bq.handle(i).get(timeout=60) for i in report["parts"]]

    batch = bq.submit_many({"handler": "reports.part", "payload": {"part": i}} for i in range(20))
    rows = sum(x.get(timeout=60)["rows"] for x in batch)

    later = bq.submit("reports.build", {}, countdown=600, tags=("nightly",))
    cancelled = bq.cancel_tag("nightly")
    with contextlib.suppress(TaskCancelledError):
        later.get(timeout=5)
    return {
        "state": bq.info(h.id).state.value, "children": len(bq.info(h.id).children),
        "parts": parts, "rows": rows, "cancelled": cancelled == [later.id],
        "later": later.state.value,
    }


if __name__ == "__main__":
    with BOQueue.from_env() as queue:
        print(tour(queue))
