"""BO quality: does a bo_queue study find minima as well as Ax run in process?

    .venv/bin/python benchmarks/bo_quality.py                  # both problems, seeds 0..9
    .venv/bin/python benchmarks/bo_quality.py --quick          # Branin, seeds 0..2 (~30 s)
    .venv/bin/python benchmarks/bo_quality.py --seeds 0-4 --problems branin,hartmann6 \
        --markdown-out /tmp/bo_quality.md
    .venv/bin/python benchmarks/bo_quality.py --seeds 0-9 --problems chartmann6 \
        --json-out benchmarks/results/bo_quality_constrained.json \
        --markdown-out benchmarks/results/bo_quality_constrained.md

Problems (minimised; the objectives and their spaces come from workers.objectives):

    branin      2-d, N = 20 trials, 5 initial (center + Sobol), regret threshold 0.1
    hartmann6   6-d, N = 30 trials, 8 initial (center + Sobol), regret threshold 0.15
    zdt1        3-d, two objectives (f0, f1), N = 25, 6 initial: the hypervolume of the
                trials' Pareto front against ZDT1's reference point (11, 11) (botorch's
                Hypervolume); target: bo_queue >= 0.95x Ax in process (median over seeds)
    chartmann6  Hartmann6 under ||x||_2 <= 1 (botorch's ConstrainedHartmann), N = 25,
                8 initial: the best feasible regret (inf while none is feasible); target:
                bo_queue within 1.5x of Ax in process (median)

The last two run ax, sobol, optuna-tpe (multi-objective TPE / TPE with constraints_func)
and bq-p1 (the closed loop with the objectives and outcome constraints) per seed and get a
table of their own.

Methods, each run once per problem and seed, all in the same process run:

    ax          Ax in process: ax.Client(random_seed=seed), "fast" generation strategy
                (center, Sobol seeded with `seed`, then BoTorch), one trial at a time:
                get_next_trials(max_trials=1) then complete_trial. The reference.
    ax-b4       Ax in process run the way Ax runs in parallel: get_next_trials(max_trials=4),
                all four completed, repeat. What parallelism 4 must never be worse than.
    ax-a4       Ax in process run the way an asynchronous pool of 4 runs: 4 trials
                running; the oldest completes, and one new trial is generated with the
                other 3 as pending points. What the closed loop at parallelism 4 does
                when its evaluations take about as long as each other (a reference).
    sobol       scrambled Sobol points (scipy.stats.qmc.Sobol(seed=seed)), N of them.
    optuna-tpe  Optuna's TPESampler(seed=seed), N trials (skipped if optuna is missing).
    bq-p1/bq-p4 bo_queue's closed loop (`run_closed_loop`) with parallelism 1 and 4,
                through Redis and real workers: skipped until that function is wired.

Regret is the best value observed in the N trials minus the known minimum. The table
gives, per problem and method: the median and the worst regret over the seeds, how many
seeds ended under the threshold, the median wall time of a run and, where it applies, the
median time of one model-based generation step. Then the issue's targets:

    - parallelism 1 matches Ax in process: median regret within 1.5x of Ax's,
      Branin < 0.1 in >= 7/10 seeds, Hartmann6 < 0.15 in >= 6/10 seeds;
    - parallelism 4 loses at most 1.5x in median regret against Ax in process at
      parallelism 1, and is never worse than Ax's own batches of 4 (ax-b4);
    - step overhead (lock, load, save, send) under 10 % of the generation time.

Ax in process runs with one torch thread by default (--torch-threads): on a shared
2-core machine torch's default of one thread per core makes some BoTorch steps 10-40x
slower whenever anything else runs, and the result depends on the thread count (the
floating-point order changes), so give the study workers the same setting.

Every run's numbers, the warnings Ax and friends raised (category, message, count), the
machine, library versions, the git commit and the date go to
benchmarks/results/bo_quality.json. The table is printed, and written alone with
--markdown-out PATH.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from workers.objectives import (
    BRANIN_MIN,
    BRANIN_SPACE,
    HARTMANN6_MIN,
    HARTMANN6_SPACE,
    NORM_BOUND,
    ZDT1_REF_POINT,
    ZDT1_SPACE,
    branin,
    constrained_hartmann6,
    hartmann6,
    zdt1,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "bo_quality.json"

# The closed-loop runs share these with Ax in process, so both start from the same design.
BRANIN_TRIALS = 20
BRANIN_INITIAL_TRIALS = 5
HARTMANN6_TRIALS = 30
HARTMANN6_INITIAL_TRIALS = 8

DEFAULT_SEEDS = tuple(range(10))
QUICK_SEEDS = (0, 1, 2)
DEFAULT_PARALLELISM = (1, 4)

# The targets.
P1_MEDIAN_RATIO_MAX = 1.5
P4_MEDIAN_RATIO_MAX = 1.5
OVERHEAD_FRACTION_MAX = 0.10
AX_BATCH = 4  # ax-b4: Ax in process, batches of this many
SEEDS_UNDER_THRESHOLD_MIN = {"branin": 0.7, "hartmann6": 0.6}  # fraction of seeds


@dataclass(frozen=True)
class Problem:
    name: str  # also the objective (metric) name the evaluator returns
    evaluator: str  # the bo_queue handler in workers.objectives
    space: dict[str, tuple[float, float]]
    minimum: float
    trials: int
    initial_trials: int
    threshold: float  # a run "succeeds" when its regret is below this
    fn: Callable[[dict[str, float]], float]


PROBLEMS: dict[str, Problem] = {
    "branin": Problem(
        name="branin", evaluator="bench.branin", space=BRANIN_SPACE, minimum=BRANIN_MIN,
        trials=BRANIN_TRIALS, initial_trials=BRANIN_INITIAL_TRIALS, threshold=0.1,
        fn=lambda p: branin(p["x1"], p["x2"]),
    ),
    "hartmann6": Problem(
        name="hartmann6", evaluator="bench.hartmann6", space=HARTMANN6_SPACE,
        minimum=HARTMANN6_MIN, trials=HARTMANN6_TRIALS,
        initial_trials=HARTMANN6_INITIAL_TRIALS, threshold=0.15,
        fn=lambda p: hartmann6([p[name] for name in HARTMANN6_SPACE]),
    ),
}


@dataclass(frozen=True)
class OutcomeProblem:
    """A problem of several outcomes, scored by one figure: the hypervolume of the trials'
    front (several objectives, higher is better) or the best feasible regret (constrained,
    lower is better)."""

    name: str
    evaluator: str  # the bo_queue handler in workers.objectives
    space: dict[str, tuple[float, float]]
    objectives: tuple[str, ...]  # all minimised
    constraints: tuple[tuple[str, float], ...]  # (metric, bound): metric <= bound
    trials: int
    initial_trials: int
    figure: str  # "hypervolume" or "feasible regret"
    fn: Callable[[Sequence[float]], dict[str, float]]

    def score(self, outcomes: Sequence[dict[str, float]]) -> float:
        if self.figure == "hypervolume":
            return hypervolume([[o[n] for n in self.objectives] for o in outcomes])
        feasible = [o[self.objectives[0]] for o in outcomes
                    if all(o[m] <= bound for m, bound in self.constraints)]
        return (min(feasible) - HARTMANN6_MIN) if feasible else math.inf


def hypervolume(points: Sequence[Sequence[float]]) -> float:
    """botorch's hypervolume of minimised 2-objective points against ZDT1's reference point."""
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    y = -torch.tensor(points, dtype=torch.double)  # botorch maximises
    return float(Hypervolume(ref_point=-torch.tensor(ZDT1_REF_POINT, dtype=torch.double))
                 .compute(y[is_non_dominated(y)]))


OUTCOME_PROBLEMS: dict[str, OutcomeProblem] = {
    "zdt1": OutcomeProblem(
        name="zdt1", evaluator="bench.zdt1", space=ZDT1_SPACE, objectives=("f0", "f1"),
        constraints=(), trials=25, initial_trials=6, figure="hypervolume", fn=zdt1,
    ),
    "chartmann6": OutcomeProblem(
        name="chartmann6", evaluator="bench.chartmann6", space=HARTMANN6_SPACE,
        objectives=("hartmann6",), constraints=(("norm", NORM_BOUND),), trials=25,
        initial_trials=8, figure="feasible regret", fn=constrained_hartmann6,
    ),
}
HV_RATIO_MIN = 0.95  # the issue: bo_queue's hypervolume >= 0.95x Ax in process's


@dataclass
class OutcomeResult:
    method: str
    problem: str
    seed: int
    score: float  # the problem's figure
    wall_s: float
    trials: int


@dataclass
class RunResult:
    """One optimisation run: a method on a problem with a seed."""

    method: str
    problem: str
    seed: int
    best_value: float
    regret: float
    wall_s: float  # the whole run, from building the optimiser to the last result
    trials: int  # trials that returned a value
    parallelism: int | None = None  # closed loop only
    best_so_far: list[float] = field(default_factory=list)  # after each trial
    # Model-based generation steps (Ax in process: each get_next_trials after the initial
    # design; closed loop: the time the study step spent inside Ax's generation).
    generation_s: list[float] = field(default_factory=list)
    # Closed loop only: per study step, the time spent outside generation and evaluation
    # (lock, load and save of the Ax snapshot, bookkeeping), for the overhead target.
    overhead_s: list[float] = field(default_factory=list)
    notes: str = ""


# -- the methods -------------------------------------------------------------------------


def _trace(values: Iterable[float]) -> list[float]:
    best, out = math.inf, []
    for value in values:
        best = min(best, value)
        out.append(best)
    return out


def _result(
    method: str, problem: Problem, seed: int, values: Sequence[float], wall_s: float, **extra: Any
) -> RunResult:
    best = min(values)
    return RunResult(
        method=method, problem=problem.name, seed=seed, best_value=best,
        regret=best - problem.minimum, wall_s=wall_s, trials=len(values),
        best_so_far=_trace(values), **extra,
    )


def ax_client(problem: Problem, seed: int) -> Any:
    """Ax in process as the closed loop configures it: "fast", the same initial design."""
    from ax import Client, RangeParameterConfig

    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name=name, bounds=bounds, parameter_type="float")
            for name, bounds in problem.space.items()
        ]
    )
    client.configure_optimization(objective=f"-{problem.name}")  # "-name" minimises
    client.configure_generation_strategy(
        method="fast",
        initialization_budget=problem.initial_trials,
        initialization_random_seed=seed,
    )
    return client


def run_ax(problem: Problem, seed: int, batch: int = 1) -> RunResult:
    """Ax in process, `batch` trials at a time (all completed before the next batch): one
    at a time is the reference the closed loop must match."""
    started = time.perf_counter()
    client = ax_client(problem, seed)
    values: list[float] = []
    generation_s: list[float] = []
    while len(values) < problem.trials:
        t0 = time.perf_counter()
        trials = client.get_next_trials(max_trials=min(batch, problem.trials - len(values)))
        if len(values) >= problem.initial_trials:
            generation_s.append(time.perf_counter() - t0)
        for index, params in trials.items():
            value = problem.fn({name: float(params[name]) for name in problem.space})
            client.complete_trial(trial_index=index, raw_data={problem.name: value})
            values.append(value)
    return _result("ax" if batch == 1 else f"ax-b{batch}", problem, seed, values,
                   time.perf_counter() - started, generation_s=generation_s)


def run_ax_async(problem: Problem, seed: int, running: int = AX_BATCH) -> RunResult:
    """Ax in process with `running` trials always out: the oldest completes, then one new
    trial is generated with the others pending (Ax conditions on RUNNING trials)."""
    started = time.perf_counter()
    client = ax_client(problem, seed)
    out: list[tuple[int, Any]] = []
    values: list[float] = []
    generation_s: list[float] = []
    while len(values) < problem.trials:
        while len(out) < running and len(values) + len(out) < problem.trials:
            t0 = time.perf_counter()
            out += client.get_next_trials(max_trials=1).items()
            if len(values) + len(out) > problem.initial_trials:
                generation_s.append(time.perf_counter() - t0)
        index, params = out.pop(0)
        value = problem.fn({name: float(params[name]) for name in problem.space})
        client.complete_trial(trial_index=index, raw_data={problem.name: value})
        values.append(value)
    return _result(f"ax-a{running}", problem, seed, values, time.perf_counter() - started,
                   generation_s=generation_s)


def run_sobol(problem: Problem, seed: int) -> RunResult:
    """N scrambled Sobol points scaled to the box: what BO has to beat."""
    from scipy.stats import qmc

    started = time.perf_counter()
    names = list(problem.space)
    sampler = qmc.Sobol(d=len(names), scramble=True, seed=seed)
    # The first N points of a 2^m draw: the same points as random(N), without the warning
    # that N is not a power of two.
    unit = sampler.random_base2(m=max(0, math.ceil(math.log2(problem.trials))))[: problem.trials]
    lows = [problem.space[name][0] for name in names]
    highs = [problem.space[name][1] for name in names]
    points = qmc.scale(unit, lows, highs)
    values = [problem.fn(dict(zip(names, map(float, row), strict=True))) for row in points]
    return _result("sobol", problem, seed, values, time.perf_counter() - started)


def optuna_available() -> bool:
    return importlib.util.find_spec("optuna") is not None


def run_optuna(problem: Problem, seed: int) -> RunResult:
    """Optuna's TPE sampler with its defaults (10 random startup trials), seeded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))

    def objective(trial: optuna.Trial) -> float:
        space = problem.space.items()
        return problem.fn({name: trial.suggest_float(name, lo, hi) for name, (lo, hi) in space})

    study.optimize(objective, n_trials=problem.trials)
    values = [float(t.value) for t in study.trials if t.value is not None]
    return _result("optuna-tpe", problem, seed, values, time.perf_counter() - started)


# -- the closed loop: to be wired to bq.studies ------------------------------------------


_cluster: dict[str, Any] = {}


def _local_cluster() -> Any:
    """One redis-server and two workers (concurrency 2, queues default/bo/evaluate) for
    every closed-loop run of this benchmark, stopped when the script exits."""
    if not _cluster:
        from bo_queue import BOQueue
        from bo_queue.testing import RedisServer, WorkerProcess

        server = RedisServer().start()
        namespace = f"boquality{os.getpid()}"
        workers = [WorkerProcess(server.url, namespace, concurrency=2, name=f"bq{i}")
                   for i in (1, 2)]
        for worker in workers:
            worker.start(wait=0)

        def stop() -> None:
            for worker in workers:
                worker.stop()
            server.close()

        atexit.register(stop)
        for worker in workers:
            worker.wait_ready(120)
        _cluster["bq"] = BOQueue(redis_url=server.url, namespace=namespace)
    return _cluster["bq"]


def run_closed_loop(problem: Problem, seed: int, parallelism: int) -> RunResult:
    """bo_queue's closed loop on real workers: a study with the problem's evaluator
    (`bench.branin` / `bench.hartmann6`), run until `problem.trials` trials completed."""
    from bo_queue import Objective, Range, Strategy

    bq = _local_cluster()
    study = bq.studies.create(
        name=f"bo-quality-{problem.name}-s{seed}-p{parallelism}",
        parameters=[Range(name, lo, hi) for name, (lo, hi) in problem.space.items()],
        objectives=[Objective(problem.name, minimize=True)],
        strategy=Strategy(initial_trials=problem.initial_trials, max_trials=problem.trials,
                          parallelism=parallelism, seed=seed),
        evaluator=problem.evaluator,
    )
    started = time.perf_counter()
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=1800, poll_s=0.1)
    wall = time.perf_counter() - started
    trials = [t for t in bq.studies.trials(study.id) if t.values]
    values = [float(t.values[problem.name]) for t in trials]
    best = min(values)
    steps = bq.studies.step_timings(study.id)
    # A closed loop's step makes one generation per trial since steps record lock_s
    # (before: one Ax call for all its trials): one entry each, so the sum stays the step's.
    generation = [st["generation_s"] / n for st in steps if st["generation_s"] > 0
                  for n in [st["made"] if "lock_s" in st else 1] for _ in range(n)]
    # Older steps recorded neither the lock wait nor the send: 0 for them.
    overhead = [st["total_s"] - st["generation_s"] + st.get("lock_s", 0) + st.get("send_s", 0)
                for st in steps]
    cached = sum(1 for st in steps if st["cached"])
    return RunResult(
        method=f"bq-p{parallelism}", problem=problem.name, seed=seed, best_value=best,
        regret=best - problem.minimum, wall_s=wall, trials=len(values),
        parallelism=parallelism, best_so_far=_trace(values), generation_s=generation,
        overhead_s=overhead,
        notes=f"{done.status}; {len(steps)} steps, {cached} with the engine cached in memory",
    )


# -- problems of several outcomes ---------------------------------------------------------


def _outcome_result(method: str, problem: OutcomeProblem, seed: int,
                    outcomes: Sequence[dict[str, float]], started: float) -> OutcomeResult:
    return OutcomeResult(method, problem.name, seed, problem.score(outcomes),
                         time.perf_counter() - started, len(outcomes))


def outcome_ax(problem: OutcomeProblem, seed: int) -> OutcomeResult:
    """Ax in process with the objectives and outcome constraints, one trial at a time."""
    from ax import Client, RangeParameterConfig

    started = time.perf_counter()
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name=n, bounds=b, parameter_type="float")
        for n, b in problem.space.items()
    ])
    client.configure_optimization(
        objective=", ".join(f"-{n}" for n in problem.objectives),
        outcome_constraints=[f"{m} <= {b}" for m, b in problem.constraints] or None,
    )
    client.configure_generation_strategy(
        method="fast", initialization_budget=problem.initial_trials,
        initialization_random_seed=seed,
    )
    outcomes: list[dict[str, float]] = []
    while len(outcomes) < problem.trials:
        for index, params in client.get_next_trials(max_trials=1).items():
            values = problem.fn([float(params[n]) for n in problem.space])
            client.complete_trial(trial_index=index, raw_data=dict(values))
            outcomes.append(values)
    return _outcome_result("ax", problem, seed, outcomes, started)


def outcome_sobol(problem: OutcomeProblem, seed: int) -> OutcomeResult:
    from scipy.stats import qmc

    started = time.perf_counter()
    sampler = qmc.Sobol(d=len(problem.space), scramble=True, seed=seed)
    unit = sampler.random_base2(m=math.ceil(math.log2(problem.trials)))[: problem.trials]
    lows, highs = zip(*problem.space.values(), strict=True)
    outcomes = [problem.fn([float(v) for v in row]) for row in qmc.scale(unit, lows, highs)]
    return _outcome_result("sobol", problem, seed, outcomes, started)


def outcome_optuna(problem: OutcomeProblem, seed: int) -> OutcomeResult:
    """Optuna's TPE (multi-objective, or with its constraints_func), seeded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    outcomes: list[dict[str, float]] = []

    def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
        return list(trial.user_attrs["violations"])

    sampler = optuna.samplers.TPESampler(
        seed=seed, constraints_func=constraints if problem.constraints else None)
    study = optuna.create_study(directions=["minimize"] * len(problem.objectives),
                                sampler=sampler)

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        space = problem.space.items()
        values = problem.fn([trial.suggest_float(n, lo, hi) for n, (lo, hi) in space])
        trial.set_user_attr("violations", [values[m] - b for m, b in problem.constraints])
        outcomes.append(values)
        return tuple(values[n] for n in problem.objectives)

    study.optimize(objective, n_trials=problem.trials)
    return _outcome_result("optuna-tpe", problem, seed, outcomes, started)


def outcome_closed_loop(problem: OutcomeProblem, seed: int) -> OutcomeResult:
    """bo_queue's closed loop on real workers, parallelism 1, as Ax in process."""
    from bo_queue import Objective, OutcomeConstraint, Range, Strategy

    bq = _local_cluster()
    study = bq.studies.create(
        name=f"bo-quality-{problem.name}-s{seed}",
        parameters=[Range(n, lo, hi) for n, (lo, hi) in problem.space.items()],
        objectives=[Objective(n) for n in problem.objectives],
        outcome_constraints=[OutcomeConstraint(metric=m, op="<=", bound=b)
                             for m, b in problem.constraints],
        strategy=Strategy(initial_trials=problem.initial_trials, max_trials=problem.trials,
                          parallelism=1, seed=seed),
        evaluator=problem.evaluator,
    )
    started = time.perf_counter()
    bq.studies.run(study.id)
    bq.studies.wait(study.id, timeout=1800, poll_s=0.1)
    outcomes = [{k: float(v) for k, v in (t.values or {}).items()}
                for t in bq.studies.trials(study.id) if t.values]
    return _outcome_result("bq-p1", problem, seed, outcomes, started)


def run_outcome_problems(problems: Sequence[OutcomeProblem], seeds: Sequence[int],
                         seen_warnings: Counter[tuple[str, str, str]]) -> list[OutcomeResult]:
    methods: list[Callable[[OutcomeProblem, int], OutcomeResult]] = [
        outcome_ax, outcome_sobol, outcome_closed_loop]
    if optuna_available():
        methods.insert(2, outcome_optuna)
    results = []
    for problem in problems:
        for seed in seeds:
            for method in methods:
                with recorded_warnings(seen_warnings):
                    result = method(problem, seed)
                results.append(result)
                print(f"  {problem.name:10} seed {seed} {result.method:10} {problem.figure} "
                      f"{result.score:9.4g}  wall {result.wall_s:6.2f} s", flush=True)
    return results


def outcome_markdown(results: Sequence[OutcomeResult]) -> str:
    """Per problem and method: the median figure over the seeds; then the issue's targets."""
    lines = ["| problem (N) | figure | method | seeds | median | worst | median wall time / run |",
             "|---|---|---|---:|---:|---:|---:|"]
    medians: dict[tuple[str, str], float] = {}
    for key in dict.fromkeys((r.problem, r.method) for r in results):
        runs = [r for r in results if (r.problem, r.method) == key]
        problem = OUTCOME_PROBLEMS[key[0]]
        scores = [r.score for r in runs]
        worst = min(scores) if problem.figure == "hypervolume" else max(scores)
        medians[key] = statistics.median(scores)
        lines.append(f"| {key[0]} ({problem.trials}) | {problem.figure} | {key[1]} | {len(runs)} "
                     f"| {_fmt(medians[key], 4)} | {_fmt(worst, 4)} "
                     f"| {statistics.median(r.wall_s for r in runs):.2f} s |")
    lines += ["", "| problem | target | value | met |", "|---|---|---:|---|"]
    for name in dict.fromkeys(r.problem for r in results):
        ours, theirs = medians.get((name, "bq-p1")), medians.get((name, "ax"))
        if ours is None or theirs is None:
            continue
        if OUTCOME_PROBLEMS[name].figure == "hypervolume":
            ratio = ours / theirs
            lines.append(f"| {name} | median hypervolume / Ax in process >= {HV_RATIO_MIN:g} "
                         f"| {ratio:.3f}x | {'met' if ratio >= HV_RATIO_MIN else 'NOT met'} |")
        else:
            ratio = ours / theirs if theirs > 0 else math.inf
            lines.append(f"| {name} | median feasible regret / Ax in process <= "
                         f"{P1_MEDIAN_RATIO_MAX:g} | {_fmt(ratio)}x "
                         f"| {'met' if ratio <= P1_MEDIAN_RATIO_MAX else 'NOT met'} |")
    return "\n".join(lines) + "\n"


# -- running everything ------------------------------------------------------------------


@contextmanager
def recorded_warnings(into: Counter[tuple[str, str, str]]) -> Iterator[None]:
    """Collect every warning (category, message, where) instead of printing it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                where = f"{Path(w.filename).as_posix().split('site-packages/')[-1]}:{w.lineno}"
                into[(w.category.__module__ + "." + w.category.__qualname__,
                      str(w.message).splitlines()[0][:200], where)] += 1


def quiet_ax_logs() -> None:
    """Ax logs every generated and completed trial at INFO on stderr."""
    from ax.utils.common.logger import set_ax_logger_levels

    set_ax_logger_levels(logging.WARNING)


def time_import_ax() -> float:
    """Seconds a fresh interpreter needs for `from ax import Client` (what a step pays cold)."""
    code = "import time; t = time.perf_counter(); import ax; print(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_all(
    problems: Sequence[Problem],
    seeds: Sequence[int],
    parallelisms: Sequence[int],
    max_minutes: float,
    verbose: bool,
    seen_warnings: Counter[tuple[str, str, str]],
) -> tuple[list[RunResult], list[str]]:
    notes: list[str] = []
    baselines: list[tuple[str, Callable[[Problem, int], RunResult]]] = [
        ("ax", run_ax), (f"ax-b{AX_BATCH}", partial(run_ax, batch=AX_BATCH)),
        (f"ax-a{AX_BATCH}", run_ax_async), ("sobol", run_sobol)
    ]
    if optuna_available():
        baselines.append(("optuna-tpe", run_optuna))
    else:
        note = "optuna is not installed: the optuna-tpe column is skipped (pip install optuna)"
        print(f"note: {note}", flush=True)
        notes.append(note)
    closed_loop = True
    results: list[RunResult] = []
    deadline = time.monotonic() + max_minutes * 60
    for problem in problems:
        for seed in seeds:
            if time.monotonic() > deadline:
                note = (f"stopped at {problem.name} seed {seed}: past --max-minutes "
                        f"{max_minutes:g}; the table covers the runs done so far")
                print(f"note: {note}", flush=True)
                notes.append(note)
                return results, notes
            runs: list[tuple[str, Callable[[], RunResult]]] = [
                (name, partial(fn, problem, seed)) for name, fn in baselines
            ]
            if closed_loop:
                runs += [
                    (f"bq-p{p}", partial(run_closed_loop, problem, seed, p)) for p in parallelisms
                ]
            for name, run in runs:
                if name.startswith("bq-") and not closed_loop:
                    continue
                with recorded_warnings(seen_warnings):
                    try:
                        result = run()
                    except NotImplementedError as exc:
                        note = f"closed-loop columns skipped: {exc}"
                        print(f"note: {note}", flush=True)
                        notes.append(note)
                        closed_loop = False
                        continue
                results.append(result)
                if verbose or name == "ax":
                    gen = (f", BO step median {statistics.median(result.generation_s):.2f} s"
                           if result.generation_s else "")
                    print(f"  {problem.name:9} seed {seed} {name:10} regret {result.regret:9.4g}"
                          f"  wall {result.wall_s:6.2f} s{gen}", flush=True)
    return results, notes


# -- the report --------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    keys: list[tuple[str, str]] = []
    for r in results:
        if (r.problem, r.method) not in keys:
            keys.append((r.problem, r.method))
    for problem_name, method in keys:
        runs = [r for r in results if (r.problem, r.method) == (problem_name, method)]
        problem = PROBLEMS[problem_name]
        regrets = [r.regret for r in runs]
        generation = [g for r in runs for g in r.generation_s]
        overhead = [o for r in runs for o in r.overhead_s]
        rows.append({
            "problem": problem_name,
            "method": method,
            "runs": len(runs),
            "seeds": [r.seed for r in runs],
            "median_regret": statistics.median(regrets),
            "worst_regret": max(regrets),
            "threshold": problem.threshold,
            "under_threshold": sum(r < problem.threshold for r in regrets),
            "median_wall_s": statistics.median(r.wall_s for r in runs),
            "median_generation_s": _median(generation),
            "overhead_fraction": (sum(overhead) / sum(generation))
            if overhead and generation else None,
        })
    return rows


def targets(rows: Sequence[dict[str, Any]], parallelisms: Sequence[int]) -> list[dict[str, Any]]:
    """The issue's targets, for every problem in the run; `met` is None when not measured."""
    by = {(row["problem"], row["method"]): row for row in rows}
    out: list[dict[str, Any]] = []

    def check(problem: str, target: str, value: Any, met: bool | None) -> None:
        out.append({"problem": problem, "target": target, "value": value, "met": met})

    for problem in dict.fromkeys(row["problem"] for row in rows):
        ax = by.get((problem, "ax"))
        threshold = PROBLEMS[problem].threshold
        share = SEEDS_UNDER_THRESHOLD_MIN[problem]
        for p, limit in ((1, P1_MEDIAN_RATIO_MAX), (4, P4_MEDIAN_RATIO_MAX)):
            if p not in parallelisms:
                continue
            row = by.get((problem, f"bq-p{p}"))
            ratio = None
            if row is not None and ax is not None:
                ratio = (row["median_regret"] / ax["median_regret"]
                         if ax["median_regret"] > 0 else math.inf)
            check(problem, f"p={p}: median regret / Ax in process <= {limit:g}", ratio,
                  None if ratio is None else ratio <= limit)
            batches = by.get((problem, f"ax-b{p}"))
            if p > 1 and row is not None and batches is not None:
                versus = (row["median_regret"] / batches["median_regret"]
                          if batches["median_regret"] > 0 else math.inf)
                check(problem, f"p={p}: median regret / Ax in process in batches of {p} <= 1",
                      versus, versus <= 1)
            pool = by.get((problem, f"ax-a{p}"))
            if p > 1 and row is not None and pool is not None:  # a reference, no target
                check(problem, f"p={p}: median regret / Ax in process with {p} running "
                      "(a reading, no target)", row["median_regret"] / pool["median_regret"]
                      if pool["median_regret"] > 0 else math.inf, None)
            if p == 1:
                for label, r in (("p=1", row), ("Ax in process (reference)", ax)):
                    check(problem, f"{label}: regret < {threshold:g} in >= {share:.0%} of seeds",
                          None if r is None else f"{r['under_threshold']}/{r['runs']}",
                          None if r is None else r["under_threshold"] >= share * r["runs"])
            overhead = None if row is None else row["overhead_fraction"]
            check(problem, f"p={p}: step overhead / generation time < {OVERHEAD_FRACTION_MAX:.0%}",
                  overhead, None if overhead is None else overhead < OVERHEAD_FRACTION_MAX)
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(rows: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]],
             notes: Sequence[str]) -> str:
    lines = [
        "| problem (N) | method | seeds | median regret | worst regret | seeds under threshold "
        "| median wall time / run | median BO step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        problem = PROBLEMS[row["problem"]]
        step = row["median_generation_s"]
        lines.append(
            f"| {row['problem']} ({problem.trials}) | {row['method']} | {row['runs']} "
            f"| {_fmt(row['median_regret'])} | {_fmt(row['worst_regret'])} "
            f"| {row['under_threshold']}/{row['runs']} (< {row['threshold']:g}) "
            f"| {row['median_wall_s']:.2f} s | {'-' if step is None else f'{step:.2f} s'} |"
        )
    if checks:
        lines += ["", "| problem | target | value | met |", "|---|---|---:|---|"]
        for c in checks:
            # met None with a value: a reading beside the targets, not one of them
            met = ("-" if c["met"] is None and c["value"] is not None
                   else {True: "met", False: "NOT met", None: "not measured"}[c["met"]])
            value = c["value"]
            if isinstance(value, float) and "overhead" in c["target"]:
                shown = f"{value:.0%}"
            elif isinstance(value, float):
                shown = f"{_fmt(value)}x"
            else:
                shown = _fmt(value)
            lines.append(f"| {c['problem']} | {c['target']} | {shown} | {met} |")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("ax-platform", "botorch", "gpytorch", "torch", "scipy", "numpy", "pandas",
                 "optuna"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given")
    return seeds


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = [*PROBLEMS, *OUTCOME_PROBLEMS]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown problem(s) {', '.join(unknown) or '(none)'}; known: {', '.join(known)}"
        )
    return names


def _ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seeds", type=_seeds, default=None,
                        help="e.g. 0-9 or 0,3,5 (default 0-9; --quick: 0-2)")
    parser.add_argument("--problems", type=_names, default=None,
                        help="comma-separated, of branin,hartmann6,zdt1,chartmann6 "
                             "(default all; --quick: branin)")
    parser.add_argument("--parallelism", type=_ints, default=list(DEFAULT_PARALLELISM),
                        help="closed-loop parallelisms (default 1,4)")
    parser.add_argument("--quick", action="store_true", help="3 seeds, Branin only")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for Ax in process (default 1; 0: torch's "
                             "default). Give the study workers the same.")
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="start no new seed after this long (default 60)")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--markdown-out", type=Path, default=None,
                        help="also write the table alone to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = parser.parse_args(argv)

    seeds = args.seeds or (list(QUICK_SEEDS) if args.quick else list(DEFAULT_SEEDS))
    names = args.problems or (["branin"] if args.quick else [*PROBLEMS, *OUTCOME_PROBLEMS])
    problems = [PROBLEMS[name] for name in names if name in PROBLEMS]
    outcome_problems = [OUTCOME_PROBLEMS[name] for name in names if name in OUTCOME_PROBLEMS]

    seen_warnings: Counter[tuple[str, str, str]] = Counter()
    load_before = os.getloadavg()
    with recorded_warnings(seen_warnings):
        logging.disable(logging.INFO)  # Ax logs at INFO while it is imported
        t0 = time.perf_counter()
        import ax  # noqa: F401  (measured here, so no run pays for it)

        import_in_process_s = time.perf_counter() - t0
        logging.disable(logging.NOTSET)
        quiet_ax_logs()
        import torch

        if args.torch_threads > 0:
            torch.set_num_threads(args.torch_threads)
        torch_threads = torch.get_num_threads()
    import_ax_s = time_import_ax()
    print(f"bo_quality: problems {', '.join(names)}; seeds {seeds}; "
          f"torch threads {torch_threads}; import ax: {import_ax_s:.1f} s in a fresh interpreter",
          flush=True)

    started = time.perf_counter()
    results, notes = run_all(problems, seeds, args.parallelism, args.max_minutes,
                             args.verbose, seen_warnings)
    outcome_results = run_outcome_problems(outcome_problems, seeds, seen_warnings)
    total_s = time.perf_counter() - started
    if not results and not outcome_results:
        print("no runs finished", file=sys.stderr)
        return 1

    rows = summarize(results)
    checks = targets(rows, args.parallelism)
    tables = [markdown(rows, checks, notes)] if results else []
    if outcome_results:
        outcome_notes = [] if results else [f"- {note}\n" for note in notes]
        tables.append("\n".join([outcome_markdown(outcome_results), *outcome_notes]))
    table = "\n".join(tables)
    print()
    print(table)
    if seen_warnings:
        print(f"{sum(seen_warnings.values())} warnings were raised (kept in the JSON), by kind:")
        kinds = Counter[str]()
        for (category, message, _), count in seen_warnings.items():
            kinds[f"{category}: {message[:90]}"] += count
        for kind, count in kinds.most_common():
            print(f"  {count:6} x {kind}")

    report = {
        "benchmark": "bo_quality",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
        },
        "versions": _versions(),
        "args": {"seeds": seeds, "problems": names, "parallelism": args.parallelism,
                 "quick": args.quick, "torch_threads": torch_threads},
        "problems": {
            p.name: {"evaluator": p.evaluator, "space": p.space, "minimum": p.minimum,
                     "trials": p.trials, "initial_trials": p.initial_trials,
                     "threshold": p.threshold}
            for p in problems
        } | {
            p.name: {"evaluator": p.evaluator, "space": p.space, "objectives": p.objectives,
                     "constraints": p.constraints, "trials": p.trials,
                     "initial_trials": p.initial_trials, "figure": p.figure}
            for p in outcome_problems
        },
        "import_ax_s": {"fresh_interpreter": import_ax_s, "this_process": import_in_process_s},
        "total_s": total_s,
        "summary": rows,
        "targets": checks,
        "notes": notes,
        "warnings": [
            {"category": c, "message": m, "where": w, "count": n}
            for (c, m, w), n in seen_warnings.most_common()
        ],
        "runs": [asdict(r) for r in results],
        "outcome_runs": [asdict(r) for r in outcome_results],
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.json_out} ({total_s:.0f} s of runs)")
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(table)
        print(f"wrote {args.markdown_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
