"""`make demo`: a real Redis, two real worker processes, and a closed-loop Bayesian
optimization of Hartmann6 on them (with --queue-tour, a tour of the task queue first).

Uses BO_QUEUE_REDIS_URL if set; otherwise starts its own redis-server on a free port.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from bo_queue.client import BOQueue
from bo_queue.errors import TaskFailedError
from bo_queue.states import Priority
from bo_queue.studies import Objective, Range, Strategy, StudyStatus
from bo_queue.testing import RedisServer, WorkerProcess
from workers.objectives import HARTMANN6_MIN, HARTMANN6_SPACE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bo_queue.demo", description=__doc__)
    parser.add_argument("--queue-tour", action="store_true", help="also tour the task queue")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--plot", default="demo_output/convergence.png")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = os.environ.get("BO_QUEUE_REDIS_URL")
        if not url:
            server = stack.enter_context(RedisServer())
            url = server.url
            print(f"started redis-server on {url}")
        namespace = f"demo{os.getpid()}"
        print("starting two workers (concurrency 2 each; Ax loads once per worker) ...")
        workers = [
            WorkerProcess(
                url, namespace, concurrency=2, imports=["bo_queue.demo.handlers"], name=f"demo{i}"
            )
            for i in (1, 2)
        ]
        for worker in workers:  # start side by side, then wait for both
            worker.start(wait=0)
            stack.callback(worker.stop)
        for worker in workers:
            worker.wait_ready(120)
        bq = stack.enter_context(BOQueue(redis_url=url, namespace=namespace))
        if args.queue_tour:
            queue_tour(bq)
        study_demo(bq, args.trials, args.plot)
        print("\ndemo finished")
    return 0


def study_demo(bq: BOQueue, trials: int, plot_path: str) -> None:
    print(f"\nclosed-loop Bayesian optimization of Hartmann6: {trials} trials, parallelism 2")
    study = bq.studies.create(
        name="hartmann6-demo",
        parameters=[Range(name, low, high) for name, (low, high) in HARTMANN6_SPACE.items()],
        objectives=[Objective("hartmann6", minimize=True)],
        strategy=Strategy(initial_trials=8, max_trials=trials, parallelism=2, seed=0),
        evaluator="bench.hartmann6",
    )
    started = time.monotonic()
    bq.studies.run(study.id)
    progress = Progress(trials)
    while True:
        current = bq.studies.get(study.id)
        best = bq.studies.best(study.id)
        progress.show(
            current.completed_trials, (best.values or {}).get("hartmann6") if best else None
        )
        if current.status.terminal:
            break
        time.sleep(0.5)
    progress.close()
    elapsed = time.monotonic() - started
    if current.status is not StudyStatus.COMPLETED:
        raise SystemExit(f"study {study.id} ended {current.status}: {current.message}")
    best = bq.studies.best(study.id)
    assert best is not None
    value = float(best.values["hartmann6"])  # type: ignore[index,arg-type]
    print("\n| study | trials | best value | known minimum | regret | time |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {study.id} | {current.completed_trials} | {value:.5f} | {HARTMANN6_MIN} "
        f"| {value - HARTMANN6_MIN:.5f} | {elapsed:.1f} s |"
    )
    params = ", ".join(f"{k}={float(v):.3f}" for k, v in best.params.items())
    print(f"best trial #{best.index} ({best.generator}): {params}")
    written = convergence_plot(bq, study.id, plot_path)
    if written:
        print(f"convergence plot: {written}")


class Progress:
    """A one-line progress bar on a terminal; a line per change otherwise (logs, CI)."""

    def __init__(self, total: int) -> None:
        self.total, self.last = total, -1
        self.tty = sys.stdout.isatty()

    def show(self, done: int, best: object) -> None:
        if done == self.last:
            return
        self.last = done
        filled = int(30 * done / self.total)
        best_text = "-" if best is None else f"{float(best):.4f}"  # type: ignore[arg-type]
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {done:>3}/{self.total} trials  best {best_text}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def close(self) -> None:
        if self.tty:
            print()


def convergence_plot(bq: BOQueue, study_id: str, path: str) -> str | None:
    """Best value so far against trial, as a PNG (needs matplotlib, which Ax brings)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no convergence plot)")
        return None
    done = [t for t in bq.studies.trials(study_id) if t.values]
    values = [float(t.values["hartmann6"]) for t in done]  # type: ignore[index,arg-type]
    best = [min(values[: i + 1]) for i in range(len(values))]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(range(1, len(values) + 1), values, "o", alpha=0.4, label="trial")
    axes.plot(range(1, len(best) + 1), best, "-", label="best so far")
    axes.axhline(HARTMANN6_MIN, linestyle="--", color="grey", label="known minimum")
    axes.set_xlabel("trial")
    axes.set_ylabel("hartmann6")
    axes.set_title("bo_queue: closed-loop Hartmann6")
    axes.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def queue_tour(bq: BOQueue) -> None:
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
        {
            "handler": "demo.square",
            "payload": {"x": i},
            "priority": priorities[i % 5],
            "tags": ["demo-batch"],
        }
        for i in range(20)
    )
    results = [h.get(timeout=30) for h in batch]
    for prio in reversed(priorities):
        got = [
            r["square"]
            for h, r in zip(batch, results, strict=True)
            if bq.info(h.id).priority is prio
        ]
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
    later = [bq.submit("demo.square", {"x": i}, countdown=30, tags=("later",)) for i in range(10)]
    cancelled = bq.cancel_tag("later")
    print(f"   cancelled {len(cancelled)}; states: {sorted({h.state.value for h in later})}")


if __name__ == "__main__":
    sys.exit(main())
