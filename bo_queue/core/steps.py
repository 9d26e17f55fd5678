"""Sans-IO steps: a call written once as the pipelines it needs, for either client.

A call that talks to Redis is a generator (Steps) that yields each step it needs, a
(Pipe, fill) pair, and is sent back the replies: `drive` runs it on a sync client
(Core.run_steps), bo_queue.aio on an asyncio one. One copy of the logic, whichever client.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")


class Pipe(Enum):
    """What a step asks for. A write (WRITE, ATOMIC) is a must-not-lose one: with
    replica_acks, its pipeline waits for the replicas too (WAIT after it, in the same
    round trip), and raises ReplicaAckError."""

    READ = "read"  # a plain pipeline: reads (the probes before a submit's write, listings)
    PLAIN = "plain"  # a plain pipeline for writes that wait for no replica (a cancel)
    WRITE = "write"  # no MULTI: the write is one script (a plain submit)
    ATOMIC = "atomic"  # MULTI ... EXEC: links, waits or holds add commands to it
    # MULTI ... EXEC on the result backend's server (Celery's keys), as Celery's own
    # writes: the sync driver uses Celery's client and its retry policy (backend.ensure)
    RESULTS = "results"
    # No pipeline: `fill(None)` is a blocking call that is no Redis command of ours
    # (Celery's broadcast, a lease loop of the sync facade); its reply is [what it
    # returned]. A sync driver calls it; an asyncio one in a worker thread, off the loop.
    CALL = "call"


# A step: a pipeline (Pipe) filled by the function; its replies are sent back in.
Step = tuple[Pipe, Callable[[Any], Any]]
Steps = Generator[Step, list[Any], T]


def drive(steps: Steps[T], execute: Callable[[Step], list[Any]]) -> T:
    """Run `steps`, each step by `execute` (its replies sent back in). An error executing
    a step is raised inside the steps, where they yielded it, so that they can undo what
    they did before it (Monitor.retrying) or let it pass."""
    try:
        step = next(steps)
        while True:
            try:
                replies = execute(step)
            except BaseException as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(replies)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
