"""What the benchmark scripts share: a redis-server and one worker of their own, the
options every script takes, a description of the machine, and where results go.

The scripts run as scripts (`python benchmarks/NAME.py`), so they import this module by
its bare name from their own directory."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

REPO = Path(__file__).resolve().parent.parent
RUN_QUEUE = "default"  # the queue the benchmark worker consumes

T = TypeVar("T")


def add_common_args(parser: argparse.ArgumentParser, default_json: Path) -> None:
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    parser.add_argument("--json-out", type=Path, default=default_json)
    parser.add_argument("--markdown-out", type=Path, default=None,
                        help="also write the markdown table (alone) to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every round")


@dataclass
class Measured(Generic[T]):
    value: T  # what `measure` returned
    redis_version: str
    began: float  # time.monotonic() before the servers started
    load_before: tuple[float, float, float]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_benchmark(
    args: argparse.Namespace, name: str, banner: str, measure: Callable[[Any], T],
    imports: Sequence[str] = (), workers: int = 1, appendonly: bool = False,
) -> Measured[T] | None:
    """Start a redis-server on a free port (AOF on if `appendonly`) and `workers` `bo-queue
    worker` processes (each of the --pool and --concurrency given, queue RUN_QUEUE,
    importing `imports`), call `measure(bq)` with a facade on them, stop them all. None if
    interrupted (Ctrl-C or SIGTERM), after cleaning up."""
    from bo_queue import BOQueue
    from bo_queue.testing import RedisServer, WorkerProcess

    # The same settings for the producer and the worker: nothing from the caller's BO_QUEUE_*.
    for variable in [k for k in os.environ if k.startswith("BO_QUEUE_")]:
        del os.environ[variable]
    os.environ["GIT_OPTIONAL_LOCKS"] = "0"  # machine_info asks git: take no index lock
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so `finally` cleans up on kill too
    began, load_before = time.monotonic(), os.getloadavg()
    log_dir = tempfile.mkdtemp(prefix=f"bo-queue-bench-{name}-")
    failed, measured = True, None
    try:
        with ExitStack() as stack:  # closes, last first: the facade, the worker, redis-server
            try:
                server = RedisServer(appendonly=appendonly)
                stack.callback(server.close)
                server.start()
                namespace = f"bench{name}{os.getpid()}"
                started = []
                for i in range(workers):
                    suffix = f"-{i + 1}" if workers > 1 else ""
                    worker = WorkerProcess(
                        server.url, namespace, queues=[RUN_QUEUE],
                        concurrency=args.concurrency, pool=args.pool,
                        name=f"bench-{name}{suffix}", imports=list(imports),
                        # so the worker can import modules from this repository
                        env={"PYTHONPATH": os.pathsep.join(
                            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)},
                        log_path=os.path.join(log_dir, f"worker{suffix}.log"),
                    )
                    # stops it even if start fails
                    stack.callback(worker.__exit__, None, None, None)
                    started.append(worker.start(wait=0))
                print(f"redis-server {server.url}; {workers} worker(s): {args.pool}, "
                      f"concurrency {args.concurrency}, queue {RUN_QUEUE!r}; {banner}",
                      file=sys.stderr, flush=True)
                for worker in started:
                    worker.wait_ready(60)
                bq = stack.enter_context(BOQueue(redis_url=server.url, namespace=namespace))
                version = str(bq.redis.info("server").get("redis_version"))
                measured = Measured(measure(bq), version, began, load_before)
            except KeyboardInterrupt:
                measured = None
            # Leaving the handler frees the interrupted frames, and the Celery AsyncResults in
            # them, while redis-server still runs (their __del__ talks to it). Collect those
            # in reference cycles now too: collected after redis-server stops, an AsyncResult's
            # __del__ retries its unsubscribe for about a minute before the process can exit.
            gc.collect()
        failed = False
    finally:
        if failed:
            print(f"worker log kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    if measured is None:
        print("interrupted; the worker and redis-server are stopped", file=sys.stderr)
    return measured


def machine_info(redis_version: str) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
            check=True,
        ).stdout.strip()
        dirty = bool(subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "bo_queue", "workers"],
            capture_output=True, text=True, check=True,
        ).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {dist: version(dist) for dist in
                     ("bo-queue", "celery", "kombu", "redis", "pydantic")},
        "redis_server": redis_version,
        "git_commit": commit,
        "library_modified_since_commit": dirty,
    }


def run_header(benchmark: str, measured: Measured[Any]) -> dict[str, Any]:
    """The first fields of a results file: which benchmark, when, how long, on what."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - measured.began, 1),
        "machine": {**machine_info(measured.redis_version),
                    "loadavg_before": measured.load_before, "loadavg_after": os.getloadavg()},
    }


def write_results(args: argparse.Namespace, result: dict[str, Any], table: str) -> None:
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json_out}", file=sys.stderr)
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(table)
        print(f"wrote {args.markdown_out}", file=sys.stderr)
