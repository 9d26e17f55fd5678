"""Task dependencies and workflows: bo_queue against raw Celery canvas, side by side.

    .venv/bin/python benchmarks/dependencies.py            # default sizes, about 1-2 minutes
    .venv/bin/python benchmarks/dependencies.py --quick    # smoke run, about 20-30 s
    .venv/bin/python benchmarks/dependencies.py -v --rounds 100 --markdown-out table.md

One run starts its own redis-server (a free port, never 127.0.0.1:6379) and one
`bo-queue worker` (prefork, concurrency 2, queue "default"), then measures, on that same
Redis and that same worker, with no-op `bo_queue.ping` tasks:

1. a chain of N tasks (N=50), each depending on the one before, timed from submitting to
   the last task's result: `bq.submit_many` of N requests with `id` and `depends_on` the
   previous id, then the last handle's `get()`; against `celery.chain(...)` of N immutable
   `bq.app.signature("bo_queue.ping", ...)` and `.get()` of its result. Rate in tasks/s.
2. fan-out/fan-in: M parallel tasks (M=50) and one task that depends on all of them,
   timed to the final task's result: `submit_many` with `depends_on` against Celery's
   `chord(group(...), callback)` (the callback a `bo_queue.ping` signature too).
3. a workflow of K sequential steps (K=20): `bq.workflows.run` + `bq.workflows.wait`
   (polling every 0.02 s), against the same K as a bo_queue `depends_on` chain and as a
   raw Celery chain; time per step.

Raw Celery uses the facade's own Celery app (`bq.app`): the broker, result backend,
serializer and worker are the same, and the worker runs the same bo_queue task for
`bo_queue.ping` whoever sent it. So what differs is how the *dependency* is carried out,
which is where bo_queue does more than Celery:

- Celery puts the rest of a chain in the message (the worker sends the next link as the
  task returns, before it even stores the result), and a chord counts finished header
  tasks in the result backend and sends the callback when the count is full. Nothing is
  written for the waiting tasks.
- bo_queue writes a task record for every task, dependents included, and parks each
  dependent in Redis (its message in a hash, the dependencies it waits on in a set, a
  link from each dependency back to it; a Lua script per dependent at submit). When a
  task ends, the script that records its end crosses it off its dependents' sets, and a
  dependent with nothing left to wait on moves to the held-submission schedule
  (bo_queue.core.delays), due now; the worker that ended the dependency then claims it from
  there and sends it at once (another script, a send, a delete). Every worker's ~1 s tick
  sends anything due that was left behind, so that tick is the fallback, not the normal
  path: a run where releases wait for it shows up as about 1 s per hop. What the extra
  work buys: dependents survive restarts, are cancelled when a dependency fails, and can
  be watched, graphed and cancelled like any task.
- A workflow step costs more still: each step is a step task *plus* an advance task
  (`bo_queue.workflow.advance`) that depends on it. The advance takes the run's lock,
  loads the run and its definition from Redis, records the step's result, submits the
  next step and the next advance (durably: held in Redis, then sent), and saves the run.
  So a K-step workflow runs 2K+1 tasks in sequence, and the producer learns the end by
  polling the run's status (`poll_s`). The row that compares the workflow with the
  plain `depends_on` chain isolates the advance's cost.

After one untimed run of each, every variant runs once per round, the order within each
group rotating from round to round, so machine noise falls on all of them. A round is
short (about 1.5 s on 2 cores), so there are many (60 by default, 12 with --quick) and
the table gives the median of the rounds.
Ratios are speeds: baseline time / bo_queue time, so higher is better for bo_queue and
1.00x is parity (for a rate that is bo_queue rate / baseline rate). Each measurement is
validated after its clock stops (every result a pong, every record SUCCEEDED, each
dependent started only after its dependencies finished), so a broken run raises instead
of producing numbers.

Results go to benchmarks/results/dependencies.json (raw numbers of every round, the
machine and the date); the table is printed, and written alone with --markdown-out PATH.
Run it as a script (it imports benchmarks/harness.py beside it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

from celery import chain, chord, group
from harness import (  # this script's directory is on sys.path
    RUN_QUEUE,
    add_common_args,
    run_benchmark,
    run_header,
    write_results,
)

from bo_queue import BOQueue, TaskState
from bo_queue.workflows import Workflow, WorkflowStatus

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "dependencies.json"

PING = "bo_queue.ping"  # the built-in bo_queue handler that answers at once
GET_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 10.0  # validation: how long a record or stored result may lag a result

T = TypeVar("T")


# -- validation ------------------------------------------------------------------------------


def _check(result: Any) -> None:
    if not (isinstance(result, dict) and result.get("pong") is True):
        raise RuntimeError(f"unexpected result from a ping task: {result!r}")


def _eventually(read: Callable[[], T], ok: Callable[[T], bool], what: str) -> T:
    """`read()` until `ok` holds: the record of a task that just returned, or the stored
    result of a chain link (Celery sends the next link before storing it), lags a little."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"validation failed: {what}")
        time.sleep(0.02)


def _succeeded_records(bq: BOQueue, ids: list[str]) -> list[Any]:
    infos = _eventually(
        lambda: bq.records.get_many(ids),
        lambda infos: all(i is not None and i.state is TaskState.SUCCEEDED for i in infos),
        f"all {len(ids)} task records SUCCEEDED",
    )
    return list(infos)


def _succeeded_results(bq: BOQueue, ids: list[str]) -> None:
    _eventually(
        lambda: bq.results.fetch_many(ids),
        lambda metas: all(m is not None and m["status"] == "SUCCESS" for m in metas),
        f"all {len(ids)} stored results SUCCESS",
    )


def _started_after(info: Any, dependencies: list[Any]) -> None:
    """bo_queue sends a dependent only once its dependencies have finished."""
    last = max(d.finished_at for d in dependencies)
    if info.started_at is None or info.started_at < last:
        raise RuntimeError(f"task {info.id} started at {info.started_at}, before its "
                           f"dependencies finished ({last})")


def _ids(kind: str, n: int) -> list[str]:
    prefix = f"{kind}-{uuid.uuid4().hex[:12]}"
    return [f"{prefix}-{i}" for i in range(n)]


# -- the variants ----------------------------------------------------------------------------
#
# Each takes the facade and a size and returns the elapsed seconds from building the
# submission to holding the final result; it validates what it ran after its clock stops.

Variant = Callable[[BOQueue, int], float]


def facade_chain(bq: BOQueue, n: int) -> float:
    """`submit_many` of n pings, each depending on the one before; the last one's result."""
    ids = _ids("chain", n)
    start = time.perf_counter()
    handles = bq.submit_many([
        {"handler": PING, "payload": {}, "id": task_id, "depends_on": ids[i - 1:i]}
        for i, task_id in enumerate(ids)
    ])
    result = handles[-1].get(timeout=GET_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    _check(result)
    infos = _succeeded_records(bq, ids)
    for before, info in pairwise(infos):
        _started_after(info, [before])
    return elapsed


def raw_chain(bq: BOQueue, n: int) -> float:
    """Celery `chain` of n immutable ping signatures; `.get()` of the last."""
    start = time.perf_counter()
    res = chain(*[
        bq.app.signature(PING, args=[{}], immutable=True) for _ in range(n)
    ]).apply_async()
    result = res.get(timeout=GET_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    _check(result)
    ids, node = [], res
    while node is not None:
        ids.append(node.id)
        node = node.parent
    if len(ids) != n:
        raise RuntimeError(f"the chain's result has {len(ids)} links, expected {n}")
    _succeeded_results(bq, ids)
    return elapsed


def facade_fanin(bq: BOQueue, m: int) -> float:
    """`submit_many` of m independent pings and one that depends on all of them."""
    ids = _ids("fan", m + 1)
    start = time.perf_counter()
    handles = bq.submit_many(
        [{"handler": PING, "payload": {}, "id": task_id} for task_id in ids[:-1]]
        + [{"handler": PING, "payload": {}, "id": ids[-1], "depends_on": ids[:-1]}]
    )
    result = handles[-1].get(timeout=GET_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    _check(result)
    *header, final = _succeeded_records(bq, ids)
    _started_after(final, header)
    return elapsed


def raw_chord(bq: BOQueue, m: int) -> float:
    """Celery `chord(group(m pings), ping)`; `.get()` of the callback."""
    start = time.perf_counter()
    res = chord(
        group(bq.app.signature(PING, args=[{}], immutable=True) for _ in range(m)),
        bq.app.signature(PING, args=[{}], immutable=True),
    ).apply_async()
    result = res.get(timeout=GET_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    _check(result)
    header = getattr(res.parent, "results", None) or []
    if len(header) != m:
        raise RuntimeError(f"the chord's header has {len(header)} results, expected {m}")
    _succeeded_results(bq, [r.id for r in header] + [res.id])
    return elapsed


def _workflow(k: int) -> Workflow:
    wf = Workflow(f"bench-{k}-steps")
    for i in range(k):
        wf.step(f"s{i}", PING)
    return wf


def facade_workflow(poll_s: float) -> Variant:
    def run(bq: BOQueue, k: int) -> float:
        """A Workflow of k sequential ping steps: `workflows.run` + `workflows.wait`."""
        definition = _workflow(k)
        start = time.perf_counter()
        started = bq.workflows.run(definition)
        done = bq.workflows.wait(started.id, timeout=GET_TIMEOUT_S, poll_s=poll_s)
        elapsed = time.perf_counter() - start
        if done.status is not WorkflowStatus.SUCCEEDED:
            raise RuntimeError(f"workflow {done.id} ended {done.status}: {done.error}")
        steps = [done.steps.get(f"s{i}") for i in range(k)]
        if any(s is None or s.state != "SUCCEEDED" for s in steps):
            raise RuntimeError(f"workflow {done.id}: not every step SUCCEEDED: {done.steps}")
        for i in range(k):
            _check(done.context.get(f"s{i}"))
        return elapsed

    return run


@dataclass(frozen=True)
class Spec:
    """A variant and the size argument it runs with ("n", "m" or "k")."""

    run: Variant
    size: str


def groups(poll_s: float) -> dict[str, dict[str, Spec]]:
    """The variants, in groups whose members are compared with each other."""
    return {
        "chain": {"chain_facade": Spec(facade_chain, "n"), "chain_raw": Spec(raw_chain, "n")},
        "fanin": {"fanin_facade": Spec(facade_fanin, "m"), "fanin_raw": Spec(raw_chord, "m")},
        "steps": {
            "steps_workflow": Spec(facade_workflow(poll_s), "k"),
            "steps_depends_on": Spec(facade_chain, "k"),
            "steps_raw": Spec(raw_chain, "k"),
        },
    }


# -- bookkeeping -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    metric: str
    facade: float
    baseline: float
    unit: str  # "tasks/s" (higher is better) or "ms", "ms/step" (lower is better)
    headline: bool = True  # False: an extra row, for information

    @property
    def speed(self) -> float:
        """Baseline time / bo_queue time: higher is better for bo_queue, 1 is parity."""
        if self.unit == "tasks/s":
            return self.facade / self.baseline if self.baseline else float("nan")
        return self.baseline / self.facade if self.facade else float("nan")


def build_rows(elapsed: dict[str, list[float]], sizes: dict[str, int], poll_s: float) -> list[Row]:
    def median_s(name: str) -> float:
        return statistics.median(elapsed[name])

    def rate(name: str, size: int) -> float:
        return statistics.median(size / t for t in elapsed[name])

    def per_step_ms(name: str) -> float:
        return median_s(name) / k * 1000

    n, m, k = sizes["n"], sizes["m"], sizes["k"]
    return [
        Row("chain", f"chain of N={n} (each task depends on the one before), submit to last "
            "result — bo_queue `submit_many` + `depends_on`; baseline: Celery `chain`",
            rate("chain_facade", n), rate("chain_raw", n), "tasks/s"),
        Row("fanin", f"fan-out/fan-in: M={m} parallel tasks, then one that depends on all, "
            "submit to final result — bo_queue `depends_on`; baseline: Celery "
            "`chord(group, callback)`",
            median_s("fanin_facade") * 1000, median_s("fanin_raw") * 1000, "ms"),
        Row("steps_workflow", f"sequence of K={k} steps, time per step — bo_queue `Workflow` "
            f"(`workflows.run` + `wait(poll_s={poll_s:g})`); baseline: Celery `chain` of K",
            per_step_ms("steps_workflow"), per_step_ms("steps_raw"), "ms/step"),
        Row("steps_depends_on", f"sequence of K={k} steps, time per step — bo_queue "
            "`submit_many` + `depends_on` chain; baseline: Celery `chain` of K",
            per_step_ms("steps_depends_on"), per_step_ms("steps_raw"), "ms/step"),
        Row("steps_workflow_vs_depends_on", f"sequence of K={k} steps, time per step — "
            "bo_queue `Workflow`; baseline: bo_queue `depends_on` chain of K (what the "
            "advance task per step costs)",
            per_step_ms("steps_workflow"), per_step_ms("steps_depends_on"), "ms/step",
            headline=False),
    ]


def _fmt(value: float, unit: str) -> str:
    if unit == "tasks/s":
        return f"{value:,.0f} tasks/s"
    return f"{value:,.1f} {unit}"


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| metric | bo_queue | baseline | speed vs baseline (baseline time ÷ bo_queue time; "
        "higher is better for bo_queue, 1.00x = parity) |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        metric = row.metric if row.headline else f"*{row.metric}*"
        lines.append(f"| {metric} | {_fmt(row.facade, row.unit)} "
                     f"| {_fmt(row.baseline, row.unit)} | {row.speed:.2f}x |")
    return "\n".join(lines) + "\n"


# -- running -----------------------------------------------------------------------------------


def run_rounds(
    bq: BOQueue, variants: dict[str, dict[str, Spec]], sizes: dict[str, int], rounds: int,
    log: Callable[[str], None],
) -> tuple[dict[str, list[float]], list[list[str]]]:
    """{variant: elapsed seconds, one per round}, and the order each round ran them in."""
    elapsed: dict[str, list[float]] = {}
    orders: list[list[str]] = []
    for rnd in range(rounds):
        log(f"round {rnd + 1}/{rounds}")
        order: list[str] = []
        for members in variants.values():
            names = list(members)
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                spec = members[name]
                size = sizes[spec.size]
                seconds = spec.run(bq, size)
                elapsed.setdefault(name, []).append(seconds)
                order.append(name)
                log(f"  {name:<18} {spec.size}={size:<4} {seconds * 1000:8.1f} ms"
                    f"  {seconds / size * 1000:6.2f} ms/task")
        orders.append(order)
    return elapsed, orders


def warm_up(bq: BOQueue, variants: dict[str, dict[str, Spec]], sizes: dict[str, int]) -> None:
    """Connections, the handler directory, both pool processes, Lua script caches."""
    for members in variants.values():
        for spec in members.values():
            spec.run(bq, sizes[spec.size])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Task dependencies and workflows: bo_queue vs raw Celery canvas.",
    )
    parser.add_argument("--n", type=int, default=50, help="tasks in the chain (default 50)")
    parser.add_argument("--m", type=int, default=50,
                        help="parallel tasks before the fan-in task (default 50)")
    parser.add_argument("--k", type=int, default=20,
                        help="sequential steps in the workflow comparison (default 20)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds, median reported (default 60; 12 with --quick): "
                        "a round of every variant takes about 1.5 s")
    parser.add_argument("--poll-s", type=float, default=0.02,
                        help="how often bq.workflows.wait polls the run (default 0.02)")
    parser.add_argument("--quick", action="store_true", help="a ~20-30 s smoke run")
    add_common_args(parser, DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 12 if args.quick else 60
    if min(args.n, args.m, args.k, args.rounds) < 1 or args.n < 2 or args.k < 2:
        parser.error("--n and --k must be at least 2, --m and --rounds positive")
    if not args.poll_s > 0:
        parser.error("--poll-s must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        if args.verbose:
            print(message, file=sys.stderr, flush=True)

    sizes = {"n": args.n, "m": args.m, "k": args.k}
    variants = groups(args.poll_s)

    def measure(bq: BOQueue) -> tuple[dict[str, list[float]], list[list[str]]]:
        warm_up(bq, variants, sizes)
        return run_rounds(bq, variants, sizes, args.rounds, log)

    banner = f"N={args.n}, M={args.m}, K={args.k}, {args.rounds} rounds"
    measured = run_benchmark(args, "deps", banner, measure)
    if measured is None:
        return 130
    elapsed, orders = measured.value

    rows = build_rows(elapsed, sizes, args.poll_s)
    table = markdown_table(rows)
    load_before, load_after = measured.load_before, os.getloadavg()
    notes = [
        f"Median of {args.rounds} rounds; every variant runs once per round, in an order that "
        "rotates from round to round within its group. Speed = baseline time / bo_queue "
        "time (for the chain, bo_queue rate / baseline rate): higher is better for "
        "bo_queue, 1.00x is parity.",
        "Raw Celery is canvas on the facade's own app (`bq.app`): same broker, backend, "
        f"serializer and worker, which runs the same bo_queue task for {PING!r} whoever sent "
        "it. Each time runs from building the submission to holding the final result.",
        "bo_queue does more per dependency: a record for every task, each dependent parked "
        "in Redis and released through the held-submission schedule by the worker that ended "
        "its last dependency (the ~1 s worker tick is only the fallback); a workflow step "
        "adds an advance task (lock, load, save the run; submit the next step durably), so K "
        f"steps are 2K+1 tasks, and `wait` polls every {args.poll_s:g} s.",
        f"Worker: one `bo-queue worker`, pool {args.pool}, concurrency {args.concurrency}. "
        f"Machine: {os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (other work on the machine makes numbers noisy).",
    ]
    print(table)
    for note in notes:
        print(f"- {note}")

    result = {
        **run_header("dependencies", measured),
        "config": {
            "chain_n": args.n, "fanin_m": args.m, "steps_k": args.k, "rounds": args.rounds,
            "workflow_poll_s": args.poll_s, "quick": args.quick, "worker_pool": args.pool,
            "worker_concurrency": args.concurrency, "run_queue": RUN_QUEUE, "handler": PING,
        },
        "metrics": {
            row.key: {
                "metric": row.metric, "unit": row.unit, "facade": row.facade,
                "baseline": row.baseline, "speed_ratio": row.speed,
                "speed_ratio_means": "baseline time / bo_queue time (higher is better)",
                "headline": row.headline,
            }
            for row in rows
        },
        "rounds": {
            "sizes": {name: sizes[spec.size] for members in variants.values()
                      for name, spec in members.items()},
            "elapsed_s": elapsed,
            "order": orders,
        },
        "notes": notes,
        "table_markdown": table,
    }
    write_results(args, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
