"""Throughput and latency of no-op tasks: the BOQueue facade against raw Celery.

    .venv/bin/python benchmarks/throughput.py            # default size, about 1-2 minutes
    .venv/bin/python benchmarks/throughput.py --quick    # smoke run, about 20-30 s
    .venv/bin/python benchmarks/throughput.py --n 5000 --rounds 5 --markdown-out table.md

One run starts its own redis-server (a free port, never 127.0.0.1:6379) and one
`bo-queue worker` (prefork, concurrency 2, queue "default"), then measures, on that same
Redis and that same worker:

1. submit rate, one by one: `bq.submit("bo_queue.ping", {})` against raw
   `bq.app.send_task("bo_queue.ping", args=[{}])`;
2. `bq.submit_many` of N against N one-by-one `bq.submit`, and N one-by-one
   `await AsyncBOQueue.submit` against them too;
3. end-to-end rate (submit N one by one, then get each result): the facade
   (`submit` + `TaskHandle.get`) against raw Celery (`send_task` + `AsyncResult.get`);
4. round-trip latency p50/p99, one task at a time (submit, get, next);
5. how cost grows with the work: submit and end-to-end rates with 1k, 10k and 100k
   tasks queued, and Redis bytes per queued task.

Raw Celery uses the facade's own Celery app (`bq.app`), so the broker, result backend,
serializer, priorities and worker are identical; what differs is the bo_queue layer on the
producer (validation, the task record, the handler lookup, its own result waiter). The
worker runs the same bo_queue task for `bo_queue.ping` whoever sent it (it writes the
record's start and finish and checks for a cancellation), so the end-to-end and latency
rows are repeated against a plain `@shared_task`: on a stock Celery worker (`celery -A
benchmarks.stock_worker worker`, queue "stock": the same Celery configuration and Redis,
a namespace of its own, kombu's own transport, no bo_queue layer at all), what a team on
plain Celery runs; and, as
before, on the bo_queue worker, which shows what the bo_queue task layer alone costs.

Every variant runs once per round, the order rotating from round to round, so machine
noise falls on all of them; the table gives the median of the rounds, and the ratio
facade / baseline (for rates higher is better, for latencies lower is better).

Results go to benchmarks/results/throughput.json (raw numbers of every round, the machine
and the date); the table is printed, and written alone with --markdown-out PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import math
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (  # this script's directory is on sys.path
    RUN_QUEUE,
    add_common_args,
    run_benchmark,
    run_header,
    write_results,
)
from plain_task import PLAIN

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "throughput.json"

PING = "bo_queue.ping"  # the built-in bo_queue handler that answers at once
STOCK_QUEUE = "stock"  # the queue the stock Celery worker consumes (plain tasks only)
PARKED_QUEUE = "bo"  # a configured queue no worker consumes: submit-only rows send here
GET_TIMEOUT_S = 120.0


# -- the variants ----------------------------------------------------------------------------
#
# Each takes the facade and a task count and returns what it measured: elapsed seconds for
# the rate variants, one round-trip time per task for the latency variants. Imports of
# bo_queue happen inside run_benchmark().

Variant = Callable[[Any, int], float]
LatencyVariant = Callable[[Any, int], list[float]]


def _check(result: Any) -> None:
    if not (isinstance(result, dict) and result.get("pong") is True):
        raise RuntimeError(f"unexpected result from a ping task: {result!r}")


def facade_submit(bq: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        bq.submit(PING, {}, queue=PARKED_QUEUE)
    return time.perf_counter() - start


def raw_submit(bq: Any, n: int) -> float:
    send = bq.app.send_task
    start = time.perf_counter()
    for _ in range(n):
        send(PING, args=[{}], queue=PARKED_QUEUE)
    return time.perf_counter() - start


def async_submit(bq: Any, n: int) -> float:
    """`await aq.submit(...)` one by one, on an AsyncBOQueue of the same settings (its own
    event loop and connections, made and warmed up untimed by one submit, as the sync
    facade is by the rounds before: its connection and handler directory)."""
    from bo_queue import AsyncBOQueue

    async def submits() -> float:
        async with AsyncBOQueue(settings=bq.settings) as aq:
            await aq.submit(PING, {}, queue=PARKED_QUEUE)
            empty_parked_queue(bq, 1)
            start = time.perf_counter()
            for _ in range(n):
                await aq.submit(PING, {}, queue=PARKED_QUEUE)
            return time.perf_counter() - start

    return asyncio.run(submits())


def facade_submit_many(bq: Any, n: int) -> float:
    start = time.perf_counter()
    bq.submit_many([{"handler": PING, "payload": {}, "queue": PARKED_QUEUE} for _ in range(n)])
    return time.perf_counter() - start


def facade_e2e(bq: Any, n: int) -> float:
    start = time.perf_counter()
    handles = [bq.submit(PING, {}) for _ in range(n)]
    results = [h.get(timeout=GET_TIMEOUT_S) for h in handles]
    elapsed = time.perf_counter() - start
    _check(results[0])
    _check(results[-1])
    return elapsed


def facade_many_e2e(bq: Any, n: int) -> float:
    start = time.perf_counter()
    handles = bq.submit_many([{"handler": PING, "payload": {}} for _ in range(n)])
    results = [h.get(timeout=GET_TIMEOUT_S) for h in handles]
    elapsed = time.perf_counter() - start
    _check(results[0])
    _check(results[-1])
    return elapsed


def _sender(bq: Any, stock: bool) -> tuple[Callable[..., Any], str]:
    """send_task and the queue: the facade's app to its worker's queue, or the stock
    worker's app (its own namespace, see stock_worker) to STOCK_QUEUE."""
    app = _stock_apps[id(bq)] if stock else bq.app
    return app.send_task, STOCK_QUEUE if stock else RUN_QUEUE


def _raw_e2e(name: str, stock: bool = False) -> Variant:
    def run(bq: Any, n: int) -> float:
        send, queue = _sender(bq, stock)
        start = time.perf_counter()
        pending = [send(name, args=[{}], queue=queue) for _ in range(n)]
        results = [r.get(timeout=GET_TIMEOUT_S) for r in pending]
        elapsed = time.perf_counter() - start
        _check(results[0])
        _check(results[-1])
        return elapsed

    return run


def facade_latency(bq: Any, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        result = bq.submit(PING, {}).get(timeout=GET_TIMEOUT_S)
        samples.append(time.perf_counter() - start)
        _check(result)
    return samples


def _raw_latency(name: str, stock: bool = False) -> LatencyVariant:
    def run(bq: Any, n: int) -> list[float]:
        send, queue = _sender(bq, stock)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            result = send(name, args=[{}], queue=queue).get(timeout=GET_TIMEOUT_S)
            samples.append(time.perf_counter() - start)
            _check(result)
        return samples

    return run


SUBMIT_VARIANTS: dict[str, Variant] = {
    "facade_submit": facade_submit,
    "raw_submit": raw_submit,
    "facade_submit_many": facade_submit_many,
    "async_submit": async_submit,
}
E2E_VARIANTS: dict[str, Variant] = {
    "facade_e2e": facade_e2e,
    "raw_e2e": _raw_e2e(PING),
    "plain_e2e": _raw_e2e(PLAIN),
    "stock_e2e": _raw_e2e(PLAIN, stock=True),
    "facade_many_e2e": facade_many_e2e,
}
LATENCY_VARIANTS: dict[str, LatencyVariant] = {
    "facade_latency": facade_latency,
    "raw_latency": _raw_latency(PING),
    "plain_latency": _raw_latency(PLAIN),
    "stock_latency": _raw_latency(PLAIN, stock=True),
}


# -- bookkeeping -------------------------------------------------------------------------------


@dataclass
class Samples:
    """Per-round measurements of every variant."""

    rates: dict[str, list[float]] = field(default_factory=dict)  # tasks/s, one per round
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # producer CPU per task
    latencies: dict[str, list[list[float]]] = field(default_factory=dict)  # seconds, per round
    # tasks queued -> {variant: tasks/s at that depth, "facade_bytes"/"raw_bytes": Redis
    # bytes per queued task}; one measurement each (see measure_depths)
    depths: dict[int, dict[str, float]] = field(default_factory=dict)

    def rate(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def cpu(self, name: str) -> float:
        return statistics.median(self.cpu_us[name])

    def latency_ms(self, name: str, pct: float) -> float:
        """The median over rounds of each round's percentile `pct`, in milliseconds."""
        return statistics.median(percentile(r, pct) for r in self.latencies[name]) * 1000


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Row:
    key: str
    metric: str
    facade: float
    baseline: float
    unit: str  # "tasks/s", "ms" or "us"
    target: float | None = None  # minimum ratio facade / baseline (maximum for latencies)
    headline: bool = True  # False: an extra row, for information

    @property
    def ratio(self) -> float:
        return self.facade / self.baseline if self.baseline else math.nan

    @property
    def lower_is_better(self) -> bool:
        return self.unit in ("ms", "us", "bytes")

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target


def build_rows(s: Samples) -> list[Row]:
    rows = [
        Row("submit", "submit rate, one by one — baseline: raw `app.send_task`",
            s.rate("facade_submit"), s.rate("raw_submit"), "tasks/s", 0.8),
        Row("submit_cpu", "producer CPU time per one-by-one submit — baseline: raw "
            "`app.send_task`", s.cpu("facade_submit"), s.cpu("raw_submit"), "us",
            headline=False),
        Row("submit_many", "`submit_many(N)` — baseline: N one-by-one facade `submit`",
            s.rate("facade_submit_many"), s.rate("facade_submit"), "tasks/s", 5.0),
        Row("async_submit", "`await AsyncBOQueue.submit` one by one — baseline: the sync "
            "facade's `submit` one by one", s.rate("async_submit"), s.rate("facade_submit"),
            "tasks/s", 1.0),
        Row("e2e", "end-to-end rate (submit N one by one, then get each) — baseline: raw "
            "`send_task` + `AsyncResult.get`",
            s.rate("facade_e2e"), s.rate("raw_e2e"), "tasks/s", 0.9),
        Row("e2e_vs_stock", "end-to-end rate — baseline: a plain Celery task on a stock "
            "Celery worker (kombu's transport, no bo_queue layer)",
            s.rate("facade_e2e"), s.rate("stock_e2e"), "tasks/s", 1.0),
        Row("e2e_vs_plain", "end-to-end rate — baseline: a plain Celery task on the "
            "bo_queue worker (what the task layer alone costs)",
            s.rate("facade_e2e"), s.rate("plain_e2e"), "tasks/s", None, headline=False),
        Row("e2e_submit_many", "end-to-end rate with `submit_many(N)` then get each — "
            "baseline: raw `send_task` + `AsyncResult.get`",
            s.rate("facade_many_e2e"), s.rate("raw_e2e"), "tasks/s", None, headline=False),
    ]
    for pct in (50, 99):
        rows.append(Row(
            f"latency_p{pct}", f"round-trip latency p{pct}, one task at a time — "
            "baseline: raw `send_task` + `AsyncResult.get`",
            s.latency_ms("facade_latency", pct), s.latency_ms("raw_latency", pct), "ms"))
    for pct in (50, 99):
        rows.append(Row(
            f"latency_p{pct}_vs_stock", f"round-trip latency p{pct} — baseline: a plain "
            "Celery task on a stock Celery worker", s.latency_ms("facade_latency", pct),
            s.latency_ms("stock_latency", pct), "ms", 1.0 if pct == 99 else None,
            headline=pct == 99))
    for pct in (50, 99):
        rows.append(Row(
            f"latency_p{pct}_vs_plain", f"round-trip latency p{pct} — baseline: a plain "
            "Celery task on the bo_queue worker", s.latency_ms("facade_latency", pct),
            s.latency_ms("plain_latency", pct), "ms", headline=False))
    for depth in sorted(s.depths):
        at = s.depths[depth]
        rows.append(Row(
            f"submit_at_{depth}", f"submit rate, one by one, with {depth:,} tasks queued — "
            "baseline: raw `app.send_task`, same depth", at["facade_submit"],
            at["raw_submit"], "tasks/s", headline=False))
        rows.append(Row(
            f"e2e_at_{depth}_vs_stock", f"end-to-end rate with {depth:,} tasks queued — "
            "baseline: a plain Celery task on a stock Celery worker, same depth",
            at["facade_e2e"], at["stock_e2e"], "tasks/s", headline=False))
        rows.append(Row(
            f"e2e_at_{depth}", f"end-to-end rate with {depth:,} tasks queued — baseline: a "
            "plain Celery task on the bo_queue worker, same depth", at["facade_e2e"],
            at["plain_e2e"], "tasks/s", headline=False))
        rows.append(Row(
            f"bytes_at_{depth}", f"Redis bytes per queued task ({depth:,} queued) — "
            "baseline: raw `send_task` (its message alone)", at["facade_bytes"],
            at["raw_bytes"], "bytes", headline=False))
    return rows


def _fmt(value: float, unit: str) -> str:
    if unit in ("tasks/s", "bytes"):
        return f"{value:,.0f} {unit}"
    return f"{value:.2f} ms" if unit == "ms" else f"{value:,.0f} us"


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| metric | facade | baseline | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.target is None:
            target = "— (lower is better)" if row.lower_is_better else "—"
        else:
            bound = "≤" if row.lower_is_better else "≥"
            target = f"{bound} {row.target:g}x ({'met' if row.meets_target else 'NOT met'})"
        metric = row.metric if row.headline else f"*{row.metric}*"
        lines.append(
            f"| {metric} | {_fmt(row.facade, row.unit)} | {_fmt(row.baseline, row.unit)} "
            f"| {row.ratio:.2f}x | {target} |"
        )
    return "\n".join(lines) + "\n"


# -- running -----------------------------------------------------------------------------------


def broker_queue_keys(bq: Any, queue: str) -> list[str]:
    """The Redis lists kombu keeps for `queue` (one per priority step)."""
    prefix = bq.keys.broker_prefix
    return [f"{prefix}{queue}"] + [f"{prefix}{queue}:{step}" for step in range(1, 10)]


def queued(bq: Any, queue: str) -> int:
    with bq.redis.pipeline(transaction=False) as pipe:
        for key in broker_queue_keys(bq, queue):
            pipe.llen(key)
        return sum(pipe.execute())


def empty_parked_queue(bq: Any, expect: int | None) -> None:
    """Check that the submit-only variant queued what it said, then throw it away."""
    found = queued(bq, PARKED_QUEUE)
    if expect is not None and found != expect:
        raise RuntimeError(f"expected {expect} messages on {PARKED_QUEUE!r}, found {found}")
    bq.redis.delete(*broker_queue_keys(bq, PARKED_QUEUE))


def _split(n: int, chunk: int) -> list[int]:
    """n as consecutive chunks of at most `chunk`."""
    return [min(chunk, n - start) for start in range(0, n, chunk)]


def submit_round(
    bq: Any, n: int, chunk: int, rnd: int
) -> dict[str, tuple[float, float]]:
    """One round of the submit-only variants: {name: (elapsed s, producer CPU s)} for n tasks.

    The one-by-one facade, raw and async submits alternate in chunks, so a burst of load from
    elsewhere on the machine hits both; `submit_many` gets the whole N in one call, at a
    position among the chunks that moves from round to round.
    """
    totals = {name: [0.0, 0.0] for name in SUBMIT_VARIANTS}

    def run(name: str, size: int) -> None:
        cpu = time.process_time()
        elapsed = SUBMIT_VARIANTS[name](bq, size)
        totals[name][1] += time.process_time() - cpu
        totals[name][0] += elapsed
        empty_parked_queue(bq, size)

    one_by_one = ["facade_submit", "raw_submit", "async_submit"]
    one_by_one = one_by_one[rnd % 3:] + one_by_one[:rnd % 3]
    sizes = _split(n, chunk)
    many_at = rnd % (len(sizes) + 1)
    for index, size in enumerate(sizes):
        if index == many_at:
            run("facade_submit_many", n)
        for name in one_by_one:
            run(name, size)
    if many_at == len(sizes):
        run("facade_submit_many", n)
    return {name: (wall, cpu) for name, (wall, cpu) in totals.items()}


def run_rounds(
    bq: Any, n: int, latency_n: int, rounds: int, chunk: int, log: Callable[[str], None]
) -> Samples:
    samples = Samples()
    for rnd in range(rounds):
        log(f"round {rnd + 1}/{rounds}")
        for name, (wall, cpu) in submit_round(bq, n, chunk, rnd).items():
            samples.rates.setdefault(name, []).append(n / wall)
            samples.cpu_us.setdefault(name, []).append(cpu / n * 1e6)
            log(f"  {name:<20} {n / wall:9,.0f} tasks/s"
                f"  producer CPU {cpu / n * 1e6:6,.0f} us/task")
        names = list(E2E_VARIANTS)
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            rate = n / E2E_VARIANTS[name](bq, n)
            samples.rates.setdefault(name, []).append(rate)
            log(f"  {name:<20} {rate:9,.0f} tasks/s")
        names = list(LATENCY_VARIANTS)
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            LATENCY_VARIANTS[name](bq, 5)  # untimed: not paying for what the last variant left
            times = LATENCY_VARIANTS[name](bq, latency_n)
            samples.latencies.setdefault(name, []).append(times)
            log(f"  {name:<20} p50 {percentile(times, 50) * 1000:6.2f} ms"
                f"  p99 {percentile(times, 99) * 1000:6.2f} ms")
    return samples


def _used_memory(bq: Any) -> int:
    return int(bq.redis.info("memory")["used_memory"])


def bytes_per_task(bq: Any, send: Callable[[int], None], n: int) -> float:
    """Redis's used memory per task after `send(n)` queued n tasks (on the parked queue)."""
    before = _used_memory(bq)
    send(n)
    return (_used_memory(bq) - before) / n


def fill(bq: Any, n: int, batch: int = 2000) -> None:
    """Queue n more tasks on the parked queue, in batches (records, messages, outbox)."""
    for size in _split(n, batch):
        bq.submit_many([{"handler": PING, "payload": {}, "queue": PARKED_QUEUE}] * size)


def measure_depths(bq: Any, depths: list[int], n: int,
                   log: Callable[[str], None]) -> dict[int, dict[str, float]]:
    """How cost grows with the work: with 1k, 10k, 100k tasks queued (records and
    messages of tasks nobody consumes, on the parked queue), the one-by-one submit rates,
    the end-to-end rates, and Redis bytes per queued task (the facade's: record, outbox
    entry, message, index and event entries; raw send_task's: its message)."""
    out: dict[int, dict[str, float]] = {}
    queued_now = 0
    for depth in sorted(depths):
        fill(bq, depth - queued_now)
        queued_now = depth
        at: dict[str, float] = {}
        for name in ("facade_submit", "raw_submit"):
            elapsed = SUBMIT_VARIANTS[name](bq, n)
            at[name] = n / elapsed
            # keep what was queued, but only the depth's own tasks count as queued
            queued_now += n
        for name in ("facade_e2e", "plain_e2e", "stock_e2e"):
            at[name] = n / E2E_VARIANTS[name](bq, n)
        sample = max(200, min(2000, depth // 10))
        at["facade_bytes"] = bytes_per_task(bq, lambda k: fill(bq, k), sample)
        at["raw_bytes"] = bytes_per_task(bq, lambda k: raw_submit(bq, k), sample)
        queued_now += 2 * sample
        log(f"  {depth:>7,} queued: " + ", ".join(f"{k} {v:,.0f}" for k, v in at.items()))
        out[depth] = at
    return out


_stock_apps: dict[int, Any] = {}  # id(facade) -> the stock worker's Celery app, while it runs


@contextmanager
def stock_worker(bq: Any, pool: str, concurrency: int) -> Iterator[None]:
    """A stock Celery worker (benchmarks/stock_worker.py) on the facade's Redis, consuming
    STOCK_QUEUE with the bo_queue worker's pool and options, ready (it has answered a task)
    when this enters; stopped, pool and all, when it leaves. It has a namespace of its own
    (its broker, unacked and result keys apart), so that the bo_queue worker never takes
    its unacknowledged messages for those of a dead worker of its own namespace."""
    from bo_queue.config import Settings
    from bo_queue.core.celery_app import make_celery

    namespace = f"{bq.settings.namespace}stock"
    app = make_celery(Settings(redis_url=bq.settings.redis_url, namespace=namespace))
    env = {**os.environ, "BO_QUEUE_REDIS_URL": bq.settings.redis_url,
           "BO_QUEUE_NAMESPACE": namespace,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    args = [sys.executable, "-m", "celery", "-A", "benchmarks.stock_worker", "worker",
            "--queues", STOCK_QUEUE, "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", "INFO", "--without-mingle", "--hostname", f"stock-{os.getpid()}@%h"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            _wait_ready(app, process, log)
            _stock_apps[id(bq)] = app
            yield
        finally:
            _stock_apps.pop(id(bq), None)
            _stop(process)
            app.close()


def _wait_ready(app: Any, process: subprocess.Popen[bytes], log: Any,
                timeout: float = 120) -> None:
    """Until the stock worker has answered a task; its log if it exits or never does."""
    from celery.exceptions import TimeoutError as ResultTimeout

    pending = app.send_task(PLAIN, args=[{}], queue=STOCK_QUEUE)
    deadline = time.monotonic() + timeout
    while True:
        try:
            _check(pending.get(timeout=1))
            return
        except ResultTimeout:
            if process.poll() is None and time.monotonic() < deadline:
                continue
        log.seek(0)
        print(log.read().decode(errors="replace")[-3000:], file=sys.stderr)
        raise RuntimeError("the stock Celery worker " + (
            "did not answer in time" if process.poll() is None else "exited"))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's process group; SIGKILL if it is slow or we are interrupted."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        _kill(process)
    except KeyboardInterrupt:
        _kill(process)
        raise


def _kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def warm_up(bq: Any, n: int) -> None:
    """Connections, the handler directory, the worker's pool processes, Lua script caches."""
    for submit in SUBMIT_VARIANTS.values():
        submit(bq, n)
        empty_parked_queue(bq, None)
    for e2e in E2E_VARIANTS.values():
        e2e(bq, n)
    for latency in LATENCY_VARIANTS.values():
        latency(bq, max(5, n // 10))


def profile_submit(bq: Any, n: int) -> str:
    """cProfile of n facade submits and n raw send_task calls (submit-only queue)."""
    out = io.StringIO()
    for name in ("facade_submit", "raw_submit"):
        profiler = cProfile.Profile()
        profiler.enable()
        SUBMIT_VARIANTS[name](bq, n)
        profiler.disable()
        empty_parked_queue(bq, n)
        out.write(f"\n### cProfile: {name}, {n} tasks (sorted by cumulative time)\n\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats("cumulative").print_stats(30)
    return out.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput and latency of no-op tasks: bo_queue facade vs raw Celery.",
    )
    parser.add_argument("--n", type=int, default=None,
                        help="tasks per rate measurement and round (default 1000; 150 with "
                        "--quick)")
    parser.add_argument("--latency-n", type=int, default=None,
                        help="round trips per latency measurement and round (default 300; 50 "
                        "with --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median is reported)")
    parser.add_argument("--chunk", type=int, default=250,
                        help="one-by-one submits alternate in chunks of this size")
    parser.add_argument("--depths", default=None,
                        help="tasks queued for the rows of how cost grows (comma-separated; "
                        "default 1000,10000,100000; 1000 with --quick; 0: none)")
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    add_common_args(parser, DEFAULT_JSON)
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, print a cProfile of facade and raw submits")
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 150 if args.quick else 1000
    if args.latency_n is None:
        args.latency_n = 50 if args.quick else 300
    if args.depths is None:
        args.depths = "1000" if args.quick else "1000,10000,100000"
    args.depths = [int(d) for d in str(args.depths).split(",") if int(d) > 0]
    if min(args.n, args.latency_n, args.rounds, args.chunk) < 1:
        parser.error("--n, --latency-n, --rounds and --chunk must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        if args.verbose:
            print(message, file=sys.stderr, flush=True)

    def measure(bq: Any) -> tuple[Samples, str]:
        with stock_worker(bq, args.pool, args.concurrency):
            warm_up(bq, min(args.n, 200))
            samples = run_rounds(bq, args.n, args.latency_n, args.rounds, args.chunk, log)
            # last: the tasks it queues stay until the run's redis-server stops
            samples.depths = measure_depths(bq, args.depths, min(args.n, 500), log)
        return samples, profile_submit(bq, args.n) if args.profile else ""

    banner = f"N={args.n}, latency N={args.latency_n}, {args.rounds} rounds"
    measured = run_benchmark(args, "tp", banner, measure, imports=["benchmarks.plain_task"])
    if measured is None:
        return 130
    samples, profile = measured.value

    rows = build_rows(samples)
    table = markdown_table(rows)
    load_before, load_after = measured.load_before, os.getloadavg()
    notes = [
        f"Median of {args.rounds} rounds; every variant runs once per round, in an order that "
        "rotates from round to round. Ratio = facade / baseline: for rates higher is better, "
        "for latencies lower is better.",
        f"Submit-only rows send to queue {PARKED_QUEUE!r}, which no worker consumes, so the "
        "producer does not share the CPUs with busy workers; the messages are counted (all "
        "must be queued) and deleted after each batch. One-by-one facade, raw and async "
        f"submits alternate in chunks of {args.chunk}; `submit_many` gets all N in one "
        "call. Producer CPU time is less sensitive than wall time to other load on the machine.",
        "Raw Celery is `bq.app.send_task(...)` + `AsyncResult.get()` on the facade's own app: "
        "same broker, backend, serializer and worker. The worker runs the same bo_queue task "
        f"for {PING!r} whoever sent it, so the non-italic rows measure the producer-side "
        f"layer. The 'plain Celery task' rows use `{PLAIN}`, a plain `@shared_task`, so "
        "they include the worker-side layer too: 'on a stock Celery worker' is `celery -A "
        f"benchmarks.stock_worker worker` on queue {STOCK_QUEUE!r} (bo_queue's Celery "
        "configuration, a namespace of its own, kombu's own transport, no bo_queue layer: "
        "what plain Celery runs), "
        "'on the bo_queue worker' is the same worker as the facade's tasks (what the task "
        "layer alone costs).",
        "The rows 'with D tasks queued' are measured once, after the rounds, with D tasks "
        f"(records and messages) waiting on {PARKED_QUEUE!r}; bytes per queued task is the "
        "growth of Redis's used_memory over a batch of tasks, divided by their number.",
        f"Workers: one `bo-queue worker` and one stock Celery worker, each pool {args.pool}, "
        f"concurrency {args.concurrency}; only one of them is busy at a time. "
        f"Machine: {os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (other work on the machine makes numbers noisy).",
    ]
    print(table)
    for note in notes:
        print(f"- {note}")
    if profile:
        print(profile)

    result = {
        **run_header("throughput", measured),
        "config": {
            "n": args.n, "latency_n": args.latency_n, "rounds": args.rounds,
            "submit_chunk": args.chunk,
            "quick": args.quick, "worker_pool": args.pool,
            "worker_concurrency": args.concurrency, "run_queue": RUN_QUEUE,
            "submit_only_queue": PARKED_QUEUE, "handler": PING, "plain_task": PLAIN,
            "depths": args.depths,
        },
        "metrics": {
            row.key: {
                "metric": row.metric, "unit": row.unit, "facade": row.facade,
                "baseline": row.baseline, "ratio": row.ratio, "target_ratio": row.target,
                "meets_target": row.meets_target, "headline": row.headline,
            }
            for row in rows
        },
        "rounds": {
            "rates_tasks_per_s": samples.rates,
            "producer_cpu_us_per_task": samples.cpu_us,
            "at_depth": {str(depth): at for depth, at in samples.depths.items()},
            "latency_ms": {
                name: [{"p50": percentile(r, 50) * 1000, "p90": percentile(r, 90) * 1000,
                        "p99": percentile(r, 99) * 1000, "max": max(r) * 1000,
                        "mean": statistics.fmean(r) * 1000} for r in rounds]
                for name, rounds in samples.latencies.items()
            },
        },
        "notes": notes,
        "table_markdown": table,
    }
    write_results(args, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
