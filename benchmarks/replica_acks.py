"""What BO_QUEUE_REPLICA_ACKS=1 costs a submit: 0 and 1 replica acks side by side.

    .venv/bin/python benchmarks/replica_acks.py            # default size, about 1 minute
    .venv/bin/python benchmarks/replica_acks.py --quick    # smoke run, about 10 s
    .venv/bin/python benchmarks/replica_acks.py --markdown-out benchmarks/results/replica_acks.md

One run starts a redis-server primary and one replica (REPLICAOF, both on free ports on
this machine, so the replica's round trip is a loopback one: a replica in another zone
adds its network round trip to every acknowledged write), and measures on that primary:

1. submit latency, one by one (p50 and p99 of each `bq.submit`), with replica_acks=0
   and replica_acks=1;
2. submit_many rate, in batches of 100 (one WAIT a batch);
3. the floor: raw redis-py, a MULTI of one HSET against the same MULTI followed by
   `WAIT 1 <timeout>` in its round trip, p50 latency.

The tasks go to a queue no worker consumes: only the producer's side is measured. Every
variant runs once per round, the order rotating, and the table gives the median of the
rounds and the ratio acks=1 / acks=0 (for latency lower is better, for rate higher).
Results go to benchmarks/results/replica_acks.json; --markdown-out writes the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Measured, run_header, write_results  # this script's directory

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "replica_acks.json"
HANDLER = "bench.acks_noop"
PARKED_QUEUE = "bo"  # configured, consumed by no worker here
BATCH = 100
TIMEOUT_S = 1.0
# Targets: an acknowledged submit costs at most twice an unacknowledged one at the median
# (one loopback round trip to the replica on top of one to the primary), and a batch,
# which waits once, keeps at least half its rate.
P50_RATIO_MAX = 2.0
MANY_RATIO_MIN = 0.5


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def submit_latencies(bq: Any, n: int) -> list[float]:
    times = []
    for i in range(n):
        began = time.perf_counter()
        bq.submit(HANDLER, {"i": i}, queue=PARKED_QUEUE)
        times.append(time.perf_counter() - began)
    return times


def submit_many_rate(bq: Any, n: int) -> float:
    batches = max(1, n // BATCH)
    requests = [{"handler": HANDLER, "payload": {"i": i}, "queue": PARKED_QUEUE}
                for i in range(BATCH)]
    began = time.perf_counter()
    for _ in range(batches):
        bq.submit_many(requests)
    return batches * BATCH / (time.perf_counter() - began)


def raw_latencies(client: Any, n: int, wait: bool) -> list[float]:
    from bo_queue.core.replicas import ReplicaAcks

    acks = ReplicaAcks(1 if wait else 0, TIMEOUT_S)
    times = []
    for i in range(n):
        began = time.perf_counter()
        with acks.pipeline(client) as pipe:
            pipe.hset(f"bench:raw:{i % 1000}", "i", i)
            pipe.execute()
        times.append(time.perf_counter() - began)
    return times


def measure(n: int, rounds: int, verbose: bool) -> tuple[dict[str, list[Any]], str]:
    import redis

    import bo_queue
    from bo_queue import BOQueue
    from bo_queue.testing import RedisServer, wait_until

    bo_queue.handler(HANDLER)(lambda payload, ctx: None)  # known here; never run
    primary, replica = RedisServer().start(), RedisServer().start()
    clients: list[Any] = []
    try:
        on_replica = redis.Redis(port=replica.port, decode_responses=True)
        raw = redis.Redis(port=primary.port, decode_responses=True)
        clients += [on_replica, raw]
        on_replica.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: on_replica.info("replication").get("master_link_status") == "up",
                   30, what="the replica's link")
        version = str(raw.info("server").get("redis_version"))
        facades = {acks: BOQueue(redis_url=primary.url, namespace=f"benchacks{acks}{os.getpid()}",
                                 replica_acks=acks, replica_ack_timeout_s=TIMEOUT_S)
                   for acks in (0, 1)}
        clients += list(facades.values())
        variants: dict[str, Callable[[], Any]] = {
            "submit_0": lambda: submit_latencies(facades[0], n),
            "submit_1": lambda: submit_latencies(facades[1], n),
            "many_0": lambda: submit_many_rate(facades[0], n),
            "many_1": lambda: submit_many_rate(facades[1], n),
            "raw_0": lambda: raw_latencies(raw, n, wait=False),
            "raw_1": lambda: raw_latencies(raw, n, wait=True),
        }
        for variant in variants.values():  # warm up: connections, scripts, handler lookups
            variant()
        rows: dict[str, list[Any]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                rows[name].append(variants[name]())
            if verbose:
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        return rows, version
    finally:
        for client in clients:
            client.close()
        replica.close()
        primary.close()


def summary(rows: dict[str, list[Any]]) -> dict[str, float]:
    def median_of(name: str, q: float) -> float:
        return statistics.median(percentile(r, q) for r in rows[name]) * 1000

    out = {f"{kind}_{acks}_{label}_ms": median_of(f"{kind}_{acks}", q)
           for kind in ("submit", "raw") for acks in (0, 1)
           for label, q in (("p50", 0.5), ("p99", 0.99))}
    out.update({f"many_{acks}_per_s": statistics.median(rows[f"many_{acks}"]) for acks in (0, 1)})
    return out


def table(s: dict[str, float]) -> str:
    def latency(what: str, kind: str, label: str) -> str:
        zero, one = s[f"{kind}_0_{label}_ms"], s[f"{kind}_1_{label}_ms"]
        return f"| {what} | {zero:.3f} ms | {one:.3f} ms | {one / zero:.2f}x |"

    many0, many1 = s["many_0_per_s"], s["many_1_per_s"]
    p50_ratio = s["submit_1_p50_ms"] / s["submit_0_p50_ms"]
    lines = [
        "| metric | replica_acks=0 | replica_acks=1 | acks=1 / acks=0 |",
        "|---|---:|---:|---:|",
        latency("`bq.submit`, one by one, p50", "submit", "p50"),
        latency("`bq.submit`, one by one, p99", "submit", "p99"),
        f"| `bq.submit_many`, batches of {BATCH}, rate | {many0:,.0f} tasks/s "
        f"| {many1:,.0f} tasks/s | {many1 / many0:.2f}x |",
        latency("*raw redis-py: MULTI of one HSET (+ `WAIT 1`), p50*", "raw", "p50"),
        latency("*raw redis-py: MULTI of one HSET (+ `WAIT 1`), p99*", "raw", "p99"),
        "",
        "| target | value | met |",
        "|---|---:|---|",
        f"| acknowledged `submit` p50 at most {P50_RATIO_MAX:g}x an unacknowledged one "
        f"| {p50_ratio:.2f}x | {'met' if p50_ratio <= P50_RATIO_MAX else 'NOT met'} |",
        f"| acknowledged `submit_many` at least {MANY_RATIO_MIN:g}x the rate "
        f"| {many1 / many0:.2f}x | {'met' if many1 / many0 >= MANY_RATIO_MIN else 'NOT met'} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="submits per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: n=200, 3 rounds")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--markdown-out", type=Path, default=None,
                        help="also write the markdown table (alone) to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="say when a round ends")
    args = parser.parse_args()
    n, rounds = (200, 3) if args.quick else (args.n, args.rounds)
    for variable in [k for k in os.environ if k.startswith("BO_QUEUE_")]:
        del os.environ[variable]  # the two facades' settings are the script's own
    began, load_before = time.monotonic(), os.getloadavg()
    rows, version = measure(n, rounds, args.verbose)
    s = summary(rows)
    text = table(s)
    print(text)
    header = run_header("replica_acks", Measured(None, version, began, load_before))
    result = {**header, "n": n, "rounds": rounds, "batch": BATCH, "timeout_s": TIMEOUT_S,
              "summary": s, "rounds_raw": {k: v for k, v in rows.items() if k.startswith("many")}}
    write_results(args, result, text)


if __name__ == "__main__":
    main()
