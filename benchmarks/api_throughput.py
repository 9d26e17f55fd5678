"""Requests per second of the HTTP API (`bo-queue api`, uvicorn) against the facade it
serves, in one run.

    .venv/bin/python benchmarks/api_throughput.py             # about a minute
    .venv/bin/python benchmarks/api_throughput.py --quick     # a smoke run
    .venv/bin/python benchmarks/api_throughput.py --markdown-out benchmarks/results/api.md

One run starts its own redis-server and one worker (benchmarks/harness.py), then a
`bo-queue api` subprocess on a free port, and loads it from this process with
`--in-flight` requests at a time (threads, each with its own keep-alive httpx client):

1. `POST /tasks` (a submit to a queue no worker consumes) against the sync facade's own
   `bq.submit` one by one in this process: what the HTTP layer costs a submit;
2. `GET /tasks/{id}` (a task's record) against `bq.info`;
3. `GET /tasks/{id}/result` of finished tasks against `TaskHandle.get`;
4. `GET /studies/{id}` (a study's record) against `bq.studies.get`.

Each variant runs once per round, in an order that rotates; the table gives the median
of the rounds. Results go to benchmarks/results/api_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import add_common_args, run_benchmark, run_header, write_results

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "api_throughput.json"
PING = "bo_queue.ping"
PARKED_QUEUE = "bo"  # configured, consumed by no worker: submit rows queue there


class Api:
    """A `bo-queue api` subprocess on the benchmark's Redis and namespace, and a key."""

    def __init__(self, bq: Any) -> None:
        from bo_queue.api.keys import ApiKeys
        from bo_queue.testing import free_port, wait_until

        self.url = f"http://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BO_QUEUE_")}
        env.update(BO_QUEUE_REDIS_URL=bq.settings.redis_url,
                   BO_QUEUE_NAMESPACE=bq.settings.namespace,
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH"))
                                              if p))
        fd, self.log = tempfile.mkstemp(prefix="bo-queue-bench-api-", suffix=".log")
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bo_queue.cli", "api", "--port", port,
             "--address", "127.0.0.1", "--log-level", "warning"],
            env=env, stdout=fd, stderr=subprocess.STDOUT)
        os.close(fd)
        self.key = ApiKeys(bq.redis).create(bq.settings.namespace, name="bench")
        wait_until(self._up, 60, what="the API to answer")

    def _up(self) -> bool:
        import httpx

        if self.process.poll() is not None:
            raise RuntimeError(f"the API exited: {Path(self.log).read_text()}")
        try:
            return httpx.get(self.url + "/openapi.json", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        Path(self.log).unlink(missing_ok=True)


def load(api: Api, requests: list[tuple[str, str, Any]], in_flight: int) -> float:
    """Send every (method, path, json body) from `in_flight` threads, each with its own
    keep-alive httpx.Client (httpx's AsyncClient costs more per request than the API
    itself on this machine); the elapsed seconds. Every answer must be a 2xx."""
    import httpx

    todo = iter(requests)
    lock = threading.Lock()
    clients = [httpx.Client(base_url=api.url, headers={"X-API-Key": api.key}, timeout=60)
               for _ in range(in_flight)]

    def worker(client: httpx.Client) -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            method, path, body = item
            answer = client.request(method, path, json=body)
            if not answer.is_success:
                raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:200]}")

    try:
        for client in clients:  # connect, untimed
            client.get("/tasks", params={"limit": 1})
        with ThreadPoolExecutor(in_flight) as pool:
            start = time.perf_counter()
            for done in [pool.submit(worker, client) for client in clients]:
                done.result()
            return time.perf_counter() - start
    finally:
        for client in clients:
            client.close()


def variants(bq: Any, api: Api, n: int, in_flight: int) -> dict[str, Callable[[], float]]:
    """name -> a measurement of n calls (elapsed seconds)."""
    submit = {"handler": PING, "payload": {}, "queue": PARKED_QUEUE}
    done = [h.id for h in bq.submit_many([{"handler": PING, "payload": {}}] * n)]
    for task_id in done:
        bq.handle(task_id).get(timeout=120)
    from bo_queue import Objective, Range

    study = bq.studies.create("api-bench", [Range("x", 0.0, 1.0)], [Objective("loss")]).id

    def timed(call: Callable[[], Any]) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    return {
        "api_submit": lambda: load(api, [("POST", "/tasks", submit)] * n, in_flight),
        "facade_submit": lambda: timed(lambda: [bq.submit(PING, {}, queue=PARKED_QUEUE)
                                                for _ in range(n)]),
        "api_info": lambda: load(api, [("GET", f"/tasks/{i}", None) for i in done], in_flight),
        "facade_info": lambda: timed(lambda: [bq.info(i) for i in done]),
        "api_result": lambda: load(api, [("GET", f"/tasks/{i}/result", None) for i in done],
                                   in_flight),
        "facade_result": lambda: timed(lambda: [bq.handle(i).get(timeout=60) for i in done]),
        "api_study": lambda: load(api, [("GET", f"/studies/{study}", None)] * n, in_flight),
        "facade_study": lambda: timed(lambda: [bq.studies.get(study) for _ in range(n)]),
    }


ROWS = [  # key, metric, API variant, facade variant
    ("submit", "`POST /tasks` — baseline: `bq.submit` one by one, in process",
     "api_submit", "facade_submit"),
    ("info", "`GET /tasks/{id}` — baseline: `bq.info`, in process", "api_info", "facade_info"),
    ("result", "`GET /tasks/{id}/result` of finished tasks — baseline: `TaskHandle.get`",
     "api_result", "facade_result"),
    ("study", "`GET /studies/{id}` — baseline: `bq.studies.get`, in process",
     "api_study", "facade_study"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="requests per variant and round "
                        "(default 2000; 300 with --quick)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=16,
                        help="HTTP requests in flight at once")
    parser.add_argument("--quick", action="store_true")
    add_common_args(parser, DEFAULT_JSON)
    args = parser.parse_args(argv)
    n = args.n or (300 if args.quick else 2000)

    def measure(bq: Any) -> dict[str, list[float]]:
        api = Api(bq)
        rates: dict[str, list[float]] = {}
        try:
            runs = variants(bq, api, n, args.in_flight)
            for call in runs.values():  # warm up: connections, caches, the API's pools
                call()
            bq.redis.delete(*[f"{bq.keys.broker_prefix}{PARKED_QUEUE}:{p}" for p in range(1, 10)],
                            f"{bq.keys.broker_prefix}{PARKED_QUEUE}")
            names = list(runs)
            for rnd in range(args.rounds):
                shift = rnd % len(names)
                for name in names[shift:] + names[:shift]:
                    rates.setdefault(name, []).append(n / runs[name]())
                    if args.verbose:
                        print(f"round {rnd + 1} {name:<14} {rates[name][-1]:8,.0f} /s",
                              file=sys.stderr)
        finally:
            api.close()
        return rates

    measured = run_benchmark(args, "api", f"N={n}, {args.rounds} rounds, "
                             f"{args.in_flight} HTTP requests in flight", measure)
    if measured is None:
        return 130
    rates = {name: statistics.median(r) for name, r in measured.value.items()}
    lines = ["| metric | API | baseline | ratio |", "|---|---:|---:|---:|"]
    for _, metric, api_name, facade_name in ROWS:
        api_rate, facade_rate = rates[api_name], rates[facade_name]
        lines.append(f"| {metric} | {api_rate:,.0f} req/s | {facade_rate:,.0f} calls/s "
                     f"| {api_rate / facade_rate:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    print(f"- Median of {args.rounds} rounds of {n}; the API served by one uvicorn process, "
          f"{args.in_flight} requests in flight (threads with httpx clients) from another; "
          f"machine: {os.cpu_count()} CPUs, load {measured.load_before[0]:.2f} before.")
    write_results(args, {
        **run_header("api_throughput", measured),
        "config": {"n": n, "rounds": args.rounds, "in_flight": args.in_flight},
        "rates_per_s": measured.value,
        "metrics": {key: {"metric": metric, "api": rates[a], "baseline": rates[f],
                          "ratio": rates[a] / rates[f]} for key, metric, a, f in ROWS},
        "table_markdown": table,
    }, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
