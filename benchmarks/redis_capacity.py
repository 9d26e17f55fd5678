"""What one Redis master carries: tasks per second against worker processes, and Redis CPU
seconds per 1,000 tasks, side by side with raw Celery; then how many worker hosts one
master serves.

    .venv/bin/python benchmarks/redis_capacity.py            # workers 1,2,4; 15-20 minutes
    .venv/bin/python benchmarks/redis_capacity.py --quick    # smoke run, 2-3 minutes
    make benchmark-redis-capacity   # the first, writing results/redis_capacity.md too

For each worker count W (`--workers`, default 1,2,4) one run starts its own redis-server
(a free port, AOF on with `appendfsync always`, as docker-compose.yml runs it) and W
separate `bo-queue worker` processes (prefork, concurrency 1 each: W hosts' worth of
consumers, heartbeats and result writes, not one worker's pool), then:

1. measures Redis's CPU while the workers are idle (heartbeats, consumers polling);
2. per round, pushes N no-op tasks through the facade (`bq.submit("bo_queue.ping")` one
   by one, then `h.get()` for each) and N through raw Celery (`bq.app.send_task` of a
   plain `@shared_task` + `AsyncResult.get()`), on the same Redis and workers, the order
   alternating from round to round;
3. reads Redis's CPU time (`INFO cpu`: `used_cpu_sys` + `used_cpu_user`, a delta over the
   batch) and divides by the tasks: Redis CPU seconds per 1,000 tasks, idle cost included.

It also counts Redis's commands per task (`total_commands_processed`, and by command
from `INFO commandstats`) and the part of the CPU spent running them (commandstats'
`usec`: no event loop, socket or AOF writes).

Redis runs commands on one thread, so one core of Redis CPU per second is its ceiling:
capacity ~= 1,000 / (CPU seconds per 1,000 tasks) tasks/s. The projection divides that by
what one worker host asks of Redis (its tasks per second times the cost of a task, plus
its idle cost), once at the CPU measured and once at the command time alone (a ceiling:
a saturated Redis shares its wake-ups and writes among many clients). This machine's 2
cores are shared by Redis, the producer and the workers, so tasks/s here is what the
machine runs, not what Redis can take; the CPU seconds per task are what carries over,
but they are a worst case: a mostly idle Redis pays a wake-up, socket calls and (with
AOF) an fsync for nearly every request, a saturated one shares them among the clients it
serves in one event-loop pass. A calibration (a SET one by one against pipelined, on the
same server) shows the size of that gap.

Results go to benchmarks/results/redis_capacity.json; the table is printed, and written
alone with --markdown-out PATH.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import (  # this script's directory is on sys.path
    REPO,
    RUN_QUEUE,
    Measured,
    add_common_args,
    run_benchmark,
    run_header,
    write_results,
)
from plain_task import PLAIN

DEFAULT_JSON = REPO / "benchmarks" / "results" / "redis_capacity.json"
COMMAND = "make benchmark-redis-capacity"

PING = "bo_queue.ping"  # the built-in bo_queue handler that answers at once
GET_TIMEOUT_S = 300.0
# The facade's task costs Redis more than Celery's own (its record, start and finish,
# outbox entry, cancellation check); the target bounds by how much.
TARGET_RATIO = 2.0
PROCESSES_PER_HOST = 8  # the projection's worker host: one worker, concurrency 8
TASK_SECONDS = (0.01, 0.1, 1.0, 10.0)  # and how long its tasks take


def redis_cpu_s(bq: Any) -> float:
    """Redis's CPU seconds so far: `used_cpu_sys` + `used_cpu_user`."""
    info = bq.redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_stats(bq: Any) -> dict[str, tuple[int, int]]:
    """INFO commandstats: (calls, microseconds running them) so far, by command."""
    stats = bq.redis.info("commandstats")
    return {key.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"]))
            for key, value in stats.items()}


def _check(result: Any) -> None:
    if not (isinstance(result, dict) and result.get("pong") is True):
        raise RuntimeError(f"unexpected result from a ping task: {result!r}")


def facade_batch(bq: Any, n: int) -> None:
    handles = [bq.submit(PING, {}) for _ in range(n)]
    for h in handles:
        _check(h.get(timeout=GET_TIMEOUT_S))


def raw_batch(bq: Any, n: int) -> None:
    send = bq.app.send_task
    pending = [send(PLAIN, args=[{}], queue=RUN_QUEUE) for _ in range(n)]
    for r in pending:
        _check(r.get(timeout=GET_TIMEOUT_S))


VARIANTS: dict[str, Callable[[Any, int], None]] = {"facade": facade_batch, "raw": raw_batch}


@dataclass
class Phase:
    """One worker count: idle Redis CPU, and per variant every round's figures."""

    workers: int
    idle_cpu_s_per_s: float
    rates: dict[str, list[float]] = field(default_factory=dict)  # tasks/s
    cpu_per_1000: dict[str, list[float]] = field(default_factory=dict)  # Redis CPU s
    # of it, the time running commands (commandstats' usec): no event loop, no socket or
    # AOF writes; what is left when Redis is saturated and those are shared by many
    exec_per_1000: dict[str, list[float]] = field(default_factory=dict)
    busy: dict[str, list[float]] = field(default_factory=dict)  # Redis CPU s per wall s
    commands: dict[str, list[float]] = field(default_factory=dict)  # Redis commands per task
    # per variant, command name -> calls per task (the mean over the rounds)
    by_command: dict[str, dict[str, float]] = field(default_factory=dict)
    # what a SET costs this Redis, one by one and pipelined (`calibrate`)
    calibration: dict[str, float] = field(default_factory=dict)

    def median(self, what: dict[str, list[float]], variant: str = "facade") -> float:
        return statistics.median(what[variant])


def measure_batch(bq: Any, phase: Phase, name: str, n: int, rounds: int) -> str:
    stats0, cpu0, t0 = command_stats(bq), redis_cpu_s(bq), time.perf_counter()
    VARIANTS[name](bq, n)
    elapsed, cpu = time.perf_counter() - t0, redis_cpu_s(bq) - cpu0
    delta = {command: (calls - stats0.get(command, (0, 0))[0],
                       usec - stats0.get(command, (0, 0))[1])
             for command, (calls, usec) in command_stats(bq).items()}
    by_command = phase.by_command.setdefault(name, {})
    for command, (calls, _) in delta.items():
        by_command[command] = by_command.get(command, 0.0) + calls / n / rounds
    commands = sum(calls for calls, _ in delta.values()) / n
    exec_s = sum(usec for _, usec in delta.values()) / 1e6
    for what, value in ((phase.rates, n / elapsed), (phase.cpu_per_1000, cpu * 1000 / n),
                        (phase.exec_per_1000, exec_s * 1000 / n), (phase.busy, cpu / elapsed),
                        (phase.commands, commands)):
        what.setdefault(name, []).append(value)
    return (f"{name}: {n / elapsed:,.0f} tasks/s, {cpu * 1000 / n:.3f} Redis CPU s per 1,000 "
            f"({exec_s * 1000 / n:.3f} running commands), Redis {cpu / elapsed:.0%} busy, "
            f"{commands:.1f} commands per task")


def calibrate(bq: Any, phase: Phase, n: int = 5000) -> None:
    """Redis CPU per SET (idle cost taken out) and time running it, sent one by one and
    in pipelines of 100: how much of a mostly idle Redis's CPU is waking up for a
    command rather than running it, on this machine."""
    keys = [f"{bq.settings.namespace}:bench-calibration:{i}" for i in range(100)]
    for label, chunk in (("one_by_one", 1), ("pipelined", 100)):
        stats0, cpu0, t0 = command_stats(bq)["set"], redis_cpu_s(bq), time.perf_counter()
        for start in range(0, n, chunk):
            pipe = bq.redis.pipeline(transaction=False)
            for i in range(start, min(start + chunk, n)):
                pipe.set(keys[i % 100], "v")
            pipe.execute()
        idle = phase.idle_cpu_s_per_s * (time.perf_counter() - t0)
        calls, usec = (a - b for a, b in zip(command_stats(bq)["set"], stats0, strict=True))
        phase.calibration[f"{label}_cpu_us"] = (redis_cpu_s(bq) - cpu0 - idle) * 1e6 / calls
        phase.calibration[f"{label}_exec_us"] = usec / calls
    bq.redis.delete(*keys)


def measure_phase(bq: Any, workers: int, n: int, rounds: int, idle_s: float,
                  log: Callable[[str], None]) -> Phase:
    for batch in VARIANTS.values():  # connections, pool processes, script caches
        batch(bq, min(n, 100))
    cpu0, t0 = redis_cpu_s(bq), time.perf_counter()
    time.sleep(idle_s)  # a measurement window, not a wait for a condition
    phase = Phase(workers, (redis_cpu_s(bq) - cpu0) / (time.perf_counter() - t0))
    log(f"  {workers} worker(s): idle Redis CPU {phase.idle_cpu_s_per_s * 1000:.1f} ms/s")
    for index in range(rounds):
        for name in list(VARIANTS)[::1 if index % 2 == 0 else -1]:  # alternating order
            log(f"    round {index + 1} " + measure_batch(bq, phase, name, n, rounds))
    if workers == 1:
        calibrate(bq, phase)
        log("    calibration: " + ", ".join(f"{k} {v:.1f}" for k, v in phase.calibration.items()))
    return phase


# -- the projection --------------------------------------------------------------------------


def hosts_served(cpu_per_1000: float, idle_per_worker: float, task_s: float,
                 processes: int = PROCESSES_PER_HOST) -> float:
    """Worker hosts (one worker of `processes` processes each, every process busy with
    tasks of `task_s` seconds) whose Redis CPU adds up to one core: Redis runs commands on
    one thread, so one core is its ceiling."""
    return 1 / (processes / task_s * cpu_per_1000 / 1000 + idle_per_worker)


# -- the report ------------------------------------------------------------------------------


def _count(value: float) -> str:
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def markdown_table(phases: list[Phase], n: int, rounds: int, aof: bool) -> str:
    lines = [
        f"{n:,} no-op tasks per batch (submit one by one, then get each), median of "
        f"{rounds} round(s); W separate workers, prefork concurrency 1 each; Redis "
        f"{'with AOF, `appendfsync always`' if aof else 'without AOF'}. Redis CPU = "
        "`used_cpu_sys` + `used_cpu_user`, the delta over the batch, idle cost included; "
        "running commands = the `usec` of `INFO commandstats`. Baseline: raw Celery "
        "(`send_task` of a plain `@shared_task` + `AsyncResult.get`) on the same Redis and "
        "workers.",
        "",
        "| workers | tasks/s | tasks/s, raw Celery | Redis CPU s per 1,000 tasks | raw Celery "
        "| ratio | target | of it running commands | commands per task (raw) | Redis busy "
        "| idle Redis CPU |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for p in phases:
        cost, raw = p.median(p.cpu_per_1000), p.median(p.cpu_per_1000, "raw")
        met = "met" if cost / raw <= TARGET_RATIO else "NOT met"
        lines.append(
            f"| {p.workers} | {p.median(p.rates):,.0f} | {p.median(p.rates, 'raw'):,.0f} "
            f"| {cost:.3f} | {raw:.3f} | {cost / raw:.2f}x | ≤ {TARGET_RATIO:g}x ({met}) "
            f"| {p.median(p.exec_per_1000):.3f} "
            f"| {p.median(p.commands):.1f} ({p.median(p.commands, 'raw'):.1f}) "
            f"| {p.median(p.busy):.0%} | {p.idle_cpu_s_per_s * 1000:.1f} ms/s |"
        )
    for variant, label in (("facade", "the facade"), ("raw", "raw Celery")):
        calls = sorted(phases[0].by_command[variant].items(), key=lambda kv: -kv[1])
        lines.append(
            f"\nRedis commands per task through {label} ({phases[0].workers} worker(s)), the "
            "most frequent: " + ", ".join(f"`{c}` {v:.1f}" for c, v in calls[:10] if v >= 0.05)
        )
    for p in phases:
        if p.calibration:
            c = p.calibration
            fsync = (", and with `appendfsync always` a write and an fsync of the AOF after "
                     "every pass that wrote" if aof else "")
            lines.append(
                f"\nCalibration on the same redis-server ({p.workers} worker(s) idle): a SET "
                f"sent one by one costs Redis {c['one_by_one_cpu_us']:.1f} us of CPU "
                f"({c['one_by_one_exec_us']:.1f} us of it running the command); pipelined 100 "
                f"at a time, {c['pipelined_cpu_us']:.1f} us ({c['pipelined_exec_us']:.1f} us). "
                f"The gap is what each event-loop pass costs (waking up, socket calls{fsync}): "
                "a mostly idle Redis pays it for nearly every request, a saturated one once "
                "for all the clients it serves in a pass."
            )
    cost = statistics.median(p.median(p.cpu_per_1000) for p in phases)
    exec_cost = statistics.median(p.median(p.exec_per_1000) for p in phases)
    idle = statistics.median(p.idle_cpu_s_per_s / p.workers for p in phases)
    lines += [
        "",
        f"Projection, one master at one core of Redis CPU: {1000 / cost:,.0f} tasks/s at the "
        f"cost measured here ({cost:.3f} s per 1,000, idle {idle * 1000:.1f} ms/s per "
        f"worker); at most {1000 / exec_cost:,.0f} tasks/s if only running the commands "
        f"cost CPU ({exec_cost:.3f} s per 1,000). Worker hosts it serves, each one `bo-queue "
        f"worker --concurrency {PROCESSES_PER_HOST}` kept busy:",
        "",
        "| tasks take | one host's tasks/s | hosts, at the cost measured | hosts, at most |",
        "|---|---:|---:|---:|",
    ]
    for task_s in TASK_SECONDS:
        lines.append(
            f"| {task_s:g} s | {PROCESSES_PER_HOST / task_s:,.1f} "
            f"| {_count(hosts_served(cost, idle, task_s))} "
            f"| {_count(hosts_served(exec_cost, idle, task_s))} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2,4",
                        help="worker process counts, comma-separated (default 1,2,4)")
    parser.add_argument("--n", type=int, default=None,
                        help="tasks per batch (default 500; 100 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per worker count (default 2; 1 with --quick)")
    parser.add_argument("--idle-s", type=float, default=None,
                        help="seconds of idle Redis CPU measured (default 5; 2 with --quick)")
    parser.add_argument("--no-aof", dest="aof", action="store_false",
                        help="Redis without its AOF (default: AOF on, appendfsync always)")
    parser.add_argument("--quick", action="store_true", help="a smoke run, 2-3 minutes")
    add_common_args(parser, DEFAULT_JSON)
    parser.set_defaults(concurrency=1)
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",")]
    args.n = args.n or (100 if args.quick else 500)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.idle_s = args.idle_s or (2.0 if args.quick else 5.0)
    if min([*args.workers, args.n, args.rounds]) < 1 or args.idle_s <= 0:
        parser.error("--workers, --n, --rounds and --idle-s must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        if args.verbose:
            print(message, file=sys.stderr, flush=True)

    phases: list[Phase] = []
    first: Measured[Phase] | None = None
    for workers in args.workers:
        measured = run_benchmark(
            args, "cap", f"N={args.n}, {args.rounds} rounds",
            lambda bq, w=workers: measure_phase(bq, w, args.n, args.rounds, args.idle_s, log),
            imports=["benchmarks.plain_task"], workers=workers, appendonly=args.aof,
        )
        if measured is None:
            return 130
        first = first or measured
        phases.append(measured.value)
    assert first is not None
    table = markdown_table(phases, args.n, args.rounds, args.aof)
    print(table)
    result = {
        **run_header("redis_capacity", first),
        "command": COMMAND if not args.quick else "redis_capacity.py --quick",
        "config": {
            "workers": args.workers, "n": args.n, "rounds": args.rounds, "idle_s": args.idle_s,
            "worker_pool": args.pool, "worker_concurrency": args.concurrency,
            "appendonly": args.aof, "appendfsync": "always", "handler": PING, "plain_task": PLAIN,
            "target_ratio": TARGET_RATIO, "processes_per_host": PROCESSES_PER_HOST,
        },
        "phases": [
            {"workers": p.workers, "idle_redis_cpu_s_per_s": p.idle_cpu_s_per_s,
             "tasks_per_s": p.rates, "redis_cpu_s_per_1000": p.cpu_per_1000,
             "redis_exec_s_per_1000": p.exec_per_1000, "redis_busy": p.busy,
             "redis_commands_per_task": p.commands, "calibration": p.calibration,
             "redis_calls_per_task_by_command": {
                 variant: dict(sorted(calls.items(), key=lambda kv: -kv[1]))
                 for variant, calls in p.by_command.items()}}
            for p in phases
        ],
        "table_markdown": table,
    }
    write_results(args, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
