"""Early stopping on a real learning curve: scikit-learn's SGDClassifier trained epoch by
epoch (`partial_fit`) on the digits data set scikit-learn ships, tuning `alpha` and `eta0`
(both on a log scale), the validation error after each epoch as the intermediate value.

Per seed, three runs of the same budget of trials:

    bq              a bo_queue closed-loop study (Ax), parallelism 2, no early stopping
    bq-es           the same study with EarlyStopping (the median rule)
    optuna-median   Optuna's TPESampler(seed=seed) with its MedianPruner, 2 threads

and for each: the epochs spent, the wall time and the best final validation error (of the
trials that ran to the end). The target: bq-es spends at most 60% of bq's epochs and its
best error is within 0.01 of bq's.

    make benchmark-early-stopping        # = python benchmarks/early_stopping.py --seeds 0-2
    python benchmarks/early_stopping.py --seeds 0 --trials 12     # a smoke run

It starts its own redis-server and two workers (concurrency 2, queues default, bo and
evaluate) that import this file for its evaluator. `--epoch-s` adds a sleep to every
epoch, so that an epoch costs what a bigger model's would (a digits epoch takes about a
millisecond): wall time then follows the epochs spent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from bo_queue import TaskContext, handler

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EVALUATOR = "bench.sgd_digits"
SPACE = {"alpha": (1e-6, 1e-1), "eta0": (1e-4, 1.0)}  # both log
DEFAULT_JSON = HERE / "results" / "early_stopping.json"
DEFAULT_MD = HERE / "results" / "early_stopping.md"


# -- the problem --------------------------------------------------------------------------


@cache
def digits_split() -> tuple[Any, Any, Any, Any]:
    """The digits data set, standardized, split 70/30 once (the same for every trial)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=0,
                                                      stratify=y)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_val), y_train, y_val


def train(alpha: float, eta0: float, epochs: int, epoch_s: float,
          on_epoch: Callable[[int, float], bool]) -> tuple[float, int]:
    """SGDClassifier for up to `epochs` epochs; `on_epoch(epoch, error)` returns True to
    stop. Returns the last validation error and the epochs run."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier

    x_train, x_val, y_train, y_val = digits_split()
    model = SGDClassifier(alpha=alpha, eta0=eta0, learning_rate="constant", random_state=0)
    classes = np.unique(y_train)
    error, ran = 1.0, 0
    for epoch in range(epochs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(x_train, y_train, classes=classes)
        error, ran = float(1.0 - model.score(x_val, y_val)), epoch + 1
        time.sleep(epoch_s)
        if on_epoch(epoch, error):
            break
    return error, ran


@handler(EVALUATOR, queue="evaluate")
def sgd_digits(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """A study's evaluator: reports the validation error after each epoch."""
    options, params = payload["options"], payload["params"]
    error, _ = train(float(params["alpha"]), float(params["eta0"]), int(options["epochs"]),
                     float(options["epoch_s"]),
                     lambda epoch, err: ctx.report_intermediate(epoch, {"error": err}))
    return {"error": error}


# -- the runs -----------------------------------------------------------------------------


def run_study(bq: Any, seed: int, args: argparse.Namespace, stopping: bool) -> dict[str, Any]:
    from bo_queue import EarlyStopping, Objective, Range, Strategy, TrialStatus

    rules = EarlyStopping(percentile=args.percentile, min_progression=args.min_progression,
                          min_curves=args.min_curves) if stopping else None
    study = bq.studies.create(
        name=f"sgd-digits-s{seed}{'-es' if stopping else ''}",
        parameters=[Range(name, low, high, log=True) for name, (low, high) in SPACE.items()],
        objectives=[Objective("error")], evaluator=EVALUATOR,
        strategy=Strategy(initial_trials=args.initial_trials, max_trials=args.trials,
                          parallelism=2, seed=seed, early_stopping=rules),
        evaluator_options={"epochs": args.epochs, "epoch_s": args.epoch_s},
    )
    started = time.perf_counter()
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=3600, poll_s=0.1)
    wall = time.perf_counter() - started
    trials = bq.studies.trials(study.id)
    epochs = sum(len(bq.studies.intermediate(study.id, t.index)) for t in trials)
    best = bq.studies.best(study.id)
    return {
        "method": "bq-es" if stopping else "bq", "seed": seed, "status": str(done.status),
        "trials": len(trials), "epochs": epochs, "wall_s": round(wall, 2),
        "best_error": None if best is None else float(best.values["error"]),
        "stopped": sum(t.status is TrialStatus.EARLY_STOPPED for t in trials),
    }


def run_optuna(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.min_curves,
                                         n_warmup_steps=args.min_progression)
    study = optuna.create_study(direction="minimize", pruner=pruner,
                                sampler=optuna.samplers.TPESampler(seed=seed))

    def objective(trial: optuna.Trial) -> float:
        alpha = trial.suggest_float("alpha", *SPACE["alpha"], log=True)
        eta0 = trial.suggest_float("eta0", *SPACE["eta0"], log=True)

        def report(epoch: int, error: float) -> bool:
            trial.report(error, epoch)
            return trial.should_prune()

        error, ran = train(alpha, eta0, args.epochs, args.epoch_s, report)
        if ran < args.epochs:
            raise optuna.TrialPruned()
        return error

    started = time.perf_counter()
    study.optimize(objective, n_trials=args.trials, n_jobs=2)
    wall = time.perf_counter() - started
    complete = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    return {
        "method": "optuna-median", "seed": seed, "status": "COMPLETED",
        "trials": len(study.trials),
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "wall_s": round(wall, 2),
        "best_error": min(t.value for t in complete) if complete else None,  # type: ignore[type-var]
        "stopped": sum(t.state is optuna.trial.TrialState.PRUNED for t in study.trials),
    }


def cluster() -> tuple[Any, Callable[[], None]]:
    """A redis-server and two workers of its own; the workers import this file."""
    from bo_queue import BOQueue
    from bo_queue.testing import RedisServer, WorkerProcess

    for variable in [k for k in os.environ if k.startswith("BO_QUEUE_")]:
        del os.environ[variable]
    server = RedisServer().start()
    namespace = f"bench-es{os.getpid()}"
    path = os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])
    workers = [WorkerProcess(server.url, namespace, concurrency=2, name=f"es{i}",
                             queues=("default", "bo", "evaluate"), imports=("early_stopping",),
                             env={"PYTHONPATH": path})
               for i in (1, 2)]
    for worker in workers:
        worker.start(wait=0)
    for worker in workers:
        worker.wait_ready(120)
    bq = BOQueue(redis_url=server.url, namespace=namespace)

    def stop() -> None:
        bq.close()
        for worker in workers:
            worker.stop()
        server.close()

    return bq, stop


# -- the table ----------------------------------------------------------------------------


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method in ("bq", "bq-es", "optuna-median"):
        mine = [r for r in runs if r["method"] == method]
        if mine:
            errors = [r["best_error"] for r in mine if r["best_error"] is not None]
            rows.append({
                "method": method, "seeds": len(mine),
                "epochs": statistics.mean(r["epochs"] for r in mine),
                "stopped": statistics.mean(r["stopped"] for r in mine),
                "wall_s": statistics.mean(r["wall_s"] for r in mine),
                "best_error": statistics.mean(errors) if errors else None,
            })
    return rows


def targets(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per seed, bq-es against bq: the share of epochs and the gap in best error."""
    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs if ("bq", r["seed"]) in by
                    and ("bq-es", r["seed"]) in by})
    shares = [by["bq-es", s]["epochs"] / by["bq", s]["epochs"] for s in seeds]
    gaps = [by["bq-es", s]["best_error"] - by["bq", s]["best_error"] for s in seeds]
    share = statistics.mean(shares) if shares else None
    gap = statistics.mean(gaps) if gaps else None
    return {"epoch_share": share, "error_gap": gap,
            "met": share is not None and gap is not None and share <= 0.6 and gap <= 0.01}


def markdown(rows: Sequence[dict[str, Any]], check: dict[str, Any],
             args: argparse.Namespace) -> str:
    lines = [
        f"SGDClassifier on digits, {args.trials} trials ({args.initial_trials} Sobol) of up to "
        f"{args.epochs} epochs, parallelism 2, {args.epoch_s:g} s added per epoch; "
        f"EarlyStopping(percentile={args.percentile:g}, min_progression={args.min_progression}, "
        f"min_curves={args.min_curves}); Optuna: MedianPruner(n_startup_trials="
        f"{args.min_curves}, n_warmup_steps={args.min_progression}). Means over seeds.",
        "",
        "| run | seeds | epochs spent | trials stopped | wall time (s) | best final val. error |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        error = "-" if row["best_error"] is None else f"{row['best_error']:.4f}"
        lines.append(f"| {row['method']} | {row['seeds']} | {row['epochs']:.0f} | "
                     f"{row['stopped']:.1f} | {row['wall_s']:.1f} | {error} |")
    if check["epoch_share"] is not None:
        lines += ["", f"Target (bq-es vs bq, per seed): epochs at most 60% (got "
                  f"{check['epoch_share']:.0%}), best error within 0.01 (got "
                  f"{check['error_gap']:+.4f}): {'met' if check['met'] else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def _seeds(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="e.g. 0-2 or 0,3")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--initial-trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--epoch-s", type=float, default=0.05)
    parser.add_argument("--percentile", type=float, default=50.0)
    parser.add_argument("--min-progression", type=int, default=2)
    parser.add_argument("--min-curves", type=int, default=4)
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--markdown-out", type=Path, default=DEFAULT_MD)
    args = parser.parse_args(argv)

    have_optuna = importlib.util.find_spec("optuna") is not None
    bq, stop = cluster()
    runs: list[dict[str, Any]] = []
    try:
        for seed in args.seeds:
            for stopping in (False, True):
                runs.append(run_study(bq, seed, args, stopping))
                print(json.dumps(runs[-1]), flush=True)
            if have_optuna:
                runs.append(run_optuna(seed, args))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        stop()
    rows, check = summarize(runs), targets(runs)
    table = markdown(rows, check, args)
    if not have_optuna:
        table += "\noptuna is not installed: no optuna-median row (pip install optuna).\n"
    print("\n" + table)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({
        "benchmark": "early_stopping", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(), "runs": runs, "summary": rows, "target": check,
    }, indent=2) + "\n")
    args.markdown_out.write_text(table)
    print(f"wrote {args.json_out} and {args.markdown_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
