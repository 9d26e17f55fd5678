"""Where a task may run: queues per capability and per handler version.

Celery routes by queue, so capabilities and versions become queue names next to the
configured ones: a handler that requires {gpu} on queue `default` goes to `default.gpu`
(requirements sorted and joined with '+'), and a submit that asks for version 2 of
`train` goes to `default.train.v2`. A worker consumes, for each of its queues, the queue
itself, one per non-empty set of the capabilities it declares, and one per versioned
handler it serves: so a task goes only where what it needs is declared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations


def capability_queue(queue: str, requires: Iterable[str]) -> str:
    needed = sorted(set(requires))
    return f"{queue}.{'+'.join(needed)}" if needed else queue


def version_queue(queue: str, handler: str, version: str) -> str:
    return f"{queue}.{handler}.v{version}"


def worker_queues(queues: Iterable[str], capabilities: Iterable[str],
                  versions: Mapping[str, tuple[str, str]]) -> list[str]:
    """Every queue a worker consumes: `queues`, their capability queues, and the version
    queues of `versions` (handler -> (its queue, its version)) on one of `queues`."""
    mine = list(dict.fromkeys(queues))
    caps = sorted(set(capabilities))
    out = list(mine)
    for size in range(1, len(caps) + 1):
        for combo in combinations(caps, size):
            out += [capability_queue(q, combo) for q in mine]
    for handler, (queue, version) in sorted(versions.items()):
        if queue in mine:
            out.append(version_queue(queue, handler, version))
    return out
