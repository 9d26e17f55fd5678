"""`make demo`: a real Redis, two real worker processes, and a batch across priorities.

Uses BO_QUEUE_REDIS_URL if set; otherwise starts its own redis-server on a free port.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack

from bo_queue.client import BOQueue
from bo_queue.errors import TaskFailedError
from bo_queue.local import RedisServer, WorkerProcess
from bo_queue.states import Priority


def main() -> int:
    with ExitStack() as stack:
        url = os.environ.get("BO_QUEUE_REDIS_URL")
        if not url:
            server = stack.enter_context(RedisServer())
            url = server.url
            print(f"started redis-server on {url}")
        namespace = f"demo{os.getpid()}"
        print("starting two workers (concurrency 2 each) ...")
        workers = [
            WorkerProcess(url, namespace, concurrency=2, imports=["bo_queue.demo_handlers"],
                          name=f"demo{i}")
            for i in (1, 2)
        ]
        for worker in workers:  # start side by side, then wait for both
            worker.start(wait=0)
            stack.callback(worker.stop)
        for worker in workers:
            worker.wait_ready()
        bq = stack.enter_context(BOQueue(redis_url=url, namespace=namespace))

        print("\n1. a slow task that reports progress")
        slow = bq.submit("bo_queue.sleep", {"seconds": 2, "steps": 8}, priority=Priority.HIGH)
        while not slow.ready():
            fraction, message = slow.progress
            print(f"   {slow.id[:8]} {slow.state.value:<9} {fraction:5.0%} {message}")
            time.sleep(0.4)
        print(f"   -> {slow.get(timeout=10)}")

        print("\n2. twenty tasks across the five priorities, submitted in one batch")
        priorities = list(Priority)
        batch = bq.submit_many(
            {"handler": "demo.square", "payload": {"x": i}, "priority": priorities[i % 5],
             "tags": ["demo-batch"]}
            for i in range(20)
        )
        results = [h.get(timeout=30) for h in batch]
        for prio in reversed(priorities):
            got = [r["square"] for h, r in zip(batch, results, strict=True)
                   if bq.info(h.id).priority is prio]
            print(f"   {prio.name:<8} squares {got}")

        print("\n3. a flaky task: fails twice, retried with backoff, then succeeds")
        flaky = bq.submit("demo.flaky", {"fail_times": 2})
        print(f"   -> {flaky.get(timeout=30)} after {bq.info(flaky.id).attempts} attempts")

        print("\n4. a task that fails for good")
        try:
            bq.submit("demo.fail", {"why": "bad input"}).get(timeout=10)
        except TaskFailedError as exc:
            print(f"   -> TaskFailedError: {exc.remote_type}: {exc.remote_message}")

        print("\n5. cancelling a tag: ten delayed tasks, none of them runs")
        later = [bq.submit("demo.square", {"x": i}, countdown=30, tags=("later",))
                 for i in range(10)]
        cancelled = bq.cancel_tag("later")
        print(f"   cancelled {len(cancelled)}; states: {sorted({h.state.value for h in later})}")
        print("\ndemo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
