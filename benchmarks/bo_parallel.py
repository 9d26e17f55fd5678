"""Parallel studies: what parallel workers buy, and whether the model is in the way.

    .venv/bin/python benchmarks/bo_parallel.py            # figures 2-5 at full size (~10 min)
    .venv/bin/python benchmarks/bo_parallel.py --quick    # smaller sizes (~3 min)

Figure 1 (quality at parallelism 4 against Ax in process, one at a time and in batches of
4) and the step overhead are `bo_quality.py`'s table (make benchmark-bo). This script
measures the rest, on the same cluster (one redis-server, two workers of two processes),
side by side with Ax in process in the same run:

    slot wait   a closed loop at parallelism 4 with 2 s evaluations: how long a freed
                evaluation slot waits for its next trial (result reported -> the next
                evaluation started), summed over the slots, as a share of slot time
                (4 x the study's wall time). Target: < 10 %.
    wall clock  Hartmann6, 32 trials, evaluations of 2 s (the evaluator's sleep_s):
                the study at parallelism 4 against Ax in process at parallelism 1
                (get_next_trials(1), sleep, complete). Targets: wall time <= 0.4x,
                median regret <= 1.5x.
    ask/tell    suggest() then report(), one producer, Branin: suggest()'s p50 and p99
                against get_next_trials(max_trials=1) in process on the same problem.
                Target: <= 1.2x + 50 ms, each.
    many        20 closed-loop studies (Branin, 8 trials, parallelism 1) at once: every
                study completes, the slowest study's wall time <= 2x the fastest's;
                study steps per second.

Writes benchmarks/results/bo_parallel.json; --markdown-out PATH writes the table alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bo_quality import (
    PROBLEMS,
    REPO,
    Problem,
    _fmt,
    _git_commit,
    _local_cluster,
    _seeds,
    _versions,
    ax_client,
    quiet_ax_logs,
    recorded_warnings,
)

DEFAULT_JSON = REPO / "benchmarks" / "results" / "bo_parallel.json"

PARALLELISM = 4
SLOT_WAIT_MAX = 0.10
WALL_RATIO_MAX = 0.4
REGRET_RATIO_MAX = 1.5
LATENCY_FACTOR, LATENCY_SLACK_S = 1.2, 0.050
STARVATION_MAX = 2.0


@dataclass(frozen=True)
class Sizes:
    wall_seeds: Sequence[int]
    wall_trials: int
    sleep_s: float
    latency_seeds: Sequence[int]
    studies: int
    study_trials: int


FULL = Sizes(wall_seeds=(0, 1), wall_trials=32, sleep_s=2.0, latency_seeds=(0, 1),
             studies=20, study_trials=8)
QUICK = Sizes(wall_seeds=(0,), wall_trials=16, sleep_s=1.0, latency_seeds=(0,),
              studies=8, study_trials=6)


def _quantile(values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _study(bq: Any, problem: Problem, seed: int, trials: int, parallelism: int,
           evaluator: str | None, options: dict[str, Any] | None = None,
           initial: int | None = None) -> Any:
    from bo_queue import Objective, Range, Strategy

    return bq.studies.create(
        name=f"bo-parallel-{problem.name}-s{seed}-p{parallelism}",
        parameters=[Range(name, lo, hi) for name, (lo, hi) in problem.space.items()],
        objectives=[Objective(problem.name, minimize=True)],
        strategy=Strategy(initial_trials=initial or problem.initial_trials, max_trials=trials,
                          parallelism=parallelism, seed=seed),
        evaluator=evaluator, evaluator_options=options,
    )


# -- wall clock and slot wait -------------------------------------------------------------


def ax_sleeping(problem: Problem, seed: int, trials: int, sleep_s: float) -> dict[str, Any]:
    """Ax in process at parallelism 1, each evaluation taking `sleep_s`."""
    started = time.perf_counter()
    client = ax_client(problem, seed)
    values: list[float] = []
    while len(values) < trials:
        for index, params in client.get_next_trials(max_trials=1).items():
            time.sleep(sleep_s)
            value = problem.fn({name: float(params[name]) for name in problem.space})
            client.complete_trial(trial_index=index, raw_data={problem.name: value})
            values.append(value)
    return {"regret": min(values) - problem.minimum, "wall_s": time.perf_counter() - started}


def bq_sleeping(problem: Problem, seed: int, trials: int, sleep_s: float) -> dict[str, Any]:
    """The closed loop at PARALLELISM, and how long its freed slots waited."""
    bq = _local_cluster()
    study = _study(bq, problem, seed, trials, PARALLELISM, problem.evaluator,
                   {"sleep_s": sleep_s})
    started = time.perf_counter()
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=1800, poll_s=0.1)
    wall = time.perf_counter() - started
    ran = [t for t in bq.studies.trials(study.id) if t.task_id]
    values = [float(t.values[problem.name]) for t in ran if t.values]
    starts = sorted(s for t in ran if (s := bq.info(str(t.task_id)).started_at) is not None)
    freed = sorted(t.reported_at for t in ran if t.reported_at is not None)
    # The k-th evaluation after the first PARALLELISM refills the slot the k-th result freed.
    waits = [max(0.0, (start - free).total_seconds())
             for start, free in zip(starts[PARALLELISM:], freed, strict=False)]
    return {
        "regret": min(values) - problem.minimum, "wall_s": wall, "status": str(done.status),
        "trials": len(values), "slot_waits_s": waits,
        "slot_wait_share": sum(waits) / (PARALLELISM * wall),
    }


# -- ask/tell latency ---------------------------------------------------------------------


def latency(problem: Problem, seed: int) -> dict[str, list[float]]:
    """bo_queue's suggest() on the workers and Ax's get_next_trials in process, one call of
    each in turn (Ax's between a suggest and its report, where the producer evaluates; the
    report is followed at once by the next suggest): both see the machine as it is then
    (its speed drifts 20-40 % within minutes, more than the gap measured). `overhead` is
    each suggest() less its step's own generation time (the k-th step that made a trial
    answered the k-th suggest: nothing else makes them)."""
    client = ax_client(problem, seed)
    bq = _local_cluster()
    study = _study(bq, problem, seed, problem.trials, 1, None)
    ax_t: list[float] = []
    bq_t: list[float] = []
    for _ in range(problem.trials):
        t0 = time.perf_counter()
        (trial,) = bq.studies.suggest(study.id)
        bq_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # Ax's call stands in for the producer's evaluation
        ((index, params),) = client.get_next_trials(max_trials=1).items()
        ax_t.append(time.perf_counter() - t0)
        value = problem.fn({name: float(params[name]) for name in problem.space})
        client.complete_trial(trial_index=index, raw_data={problem.name: value})
        value = problem.fn({name: float(trial.params[name]) for name in problem.space})
        bq.studies.report(study.id, trial.index, {problem.name: value})  # suggest() next
    made = [s["generation_s"] for s in bq.studies.step_timings(study.id) if s["made"]]
    return {"ax": ax_t, "bq": bq_t,
            "overhead": [t - g for t, g in zip(bq_t, made, strict=False)]}


# -- many studies -------------------------------------------------------------------------


def many_studies(problem: Problem, count: int, trials: int) -> dict[str, Any]:
    bq = _local_cluster()
    studies = [_study(bq, problem, seed, trials, 1, problem.evaluator, initial=trials // 2)
               for seed in range(100, 100 + count)]
    started = time.perf_counter()
    for study in studies:
        bq.studies.run(study.id)
    ended: dict[str, float] = {}
    statuses: dict[str, str] = {}
    deadline = started + 1800
    while len(ended) < count and time.perf_counter() < deadline:
        for study in studies:
            if study.id not in ended and (now := bq.studies.get(study.id)).status.terminal:
                ended[study.id] = time.perf_counter() - started
                statuses[study.id] = str(now.status)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    steps = sum(len(bq.studies.step_timings(s.id)) for s in studies)
    times = list(ended.values())
    return {
        "studies": count, "completed": sum(s == "COMPLETED" for s in statuses.values()),
        "fastest_s": min(times), "slowest_s": max(times), "wall_s": wall, "steps": steps,
        "steps_per_s": steps / wall, "starvation": max(times) / min(times),
    }


# -- the report ---------------------------------------------------------------------------


FIGURES = ("wall", "latency", "many")


def measure(sizes: Sizes, figures: Sequence[str], seen: Counter[tuple[str, str, str]]
            ) -> dict[str, Any]:
    hartmann = PROBLEMS["hartmann6"]
    branin = PROBLEMS["branin"]
    out: dict[str, Any] = {"wall": [], "latency": {"ax": [], "bq": [], "overhead": []}}
    for seed in sizes.wall_seeds if "wall" in figures else ():
        with recorded_warnings(seen):
            ax = ax_sleeping(hartmann, seed, sizes.wall_trials, sizes.sleep_s)
            bq = bq_sleeping(hartmann, seed, sizes.wall_trials, sizes.sleep_s)
        print(f"  wall clock seed {seed}: Ax p1 {ax['wall_s']:.1f} s regret {ax['regret']:.3g};"
              f" bq-p4 {bq['wall_s']:.1f} s regret {bq['regret']:.3g},"
              f" slot wait {bq['slot_wait_share']:.0%}", flush=True)
        out["wall"].append({"seed": seed, "ax": ax, "bq": bq})
    for seed in sizes.latency_seeds if "latency" in figures else ():
        with recorded_warnings(seen):
            for name, took in latency(branin, seed).items():
                out["latency"][name] += took
        print(f"  ask/tell seed {seed} done", flush=True)
    if "many" in figures:
        with recorded_warnings(seen):
            out["many"] = many_studies(branin, sizes.studies, sizes.study_trials)
        print(f"  many studies: {out['many']}", flush=True)
    return out


def checks(m: dict[str, Any], sizes: Sizes) -> list[tuple[str, str, str, bool]]:
    """(measure, value, target, met)."""
    rows: list[tuple[str, str, str, bool]] = []
    if m["wall"]:
        rows += _wall_checks(m["wall"], sizes)
    if m["latency"]["bq"]:
        rows += _latency_checks(m["latency"]["ax"], m["latency"]["bq"],
                                m["latency"].get("overhead", []))
    if "many" in m:
        rows += _many_checks(m["many"])
    return rows


def _wall_checks(wall: list[dict[str, Any]], sizes: Sizes) -> list[tuple[str, str, str, bool]]:
    rows: list[tuple[str, str, str, bool]] = []
    share = statistics.median(w["bq"]["slot_wait_share"] for w in wall)
    waits = [x for w in wall for x in w["bq"]["slot_waits_s"]]
    rows.append((f"slot wait, p={PARALLELISM}, {sizes.sleep_s:g} s evaluations "
                 f"(median wait {_fmt(statistics.median(waits) if waits else 0.0)} s)",
                 f"{share:.0%}", f"< {SLOT_WAIT_MAX:.0%} of slot time", share < SLOT_WAIT_MAX))
    ax_wall = statistics.median(w["ax"]["wall_s"] for w in wall)
    bq_wall = statistics.median(w["bq"]["wall_s"] for w in wall)
    ax_regret = statistics.median(w["ax"]["regret"] for w in wall)
    bq_regret = statistics.median(w["bq"]["regret"] for w in wall)
    seeds = len(wall)
    rows.append((f"wall clock, Hartmann6 {sizes.wall_trials} trials, p={PARALLELISM} / Ax p=1 "
                 f"({bq_wall:.1f} s / {ax_wall:.1f} s, {seeds} seeds)",
                 f"{bq_wall / ax_wall:.2f}x", f"<= {WALL_RATIO_MAX:g}x",
                 bq_wall / ax_wall <= WALL_RATIO_MAX))
    ratio = bq_regret / ax_regret if ax_regret > 0 else float("inf")
    rows.append((f"median regret, same runs ({_fmt(bq_regret)} / {_fmt(ax_regret)})",
                 f"{_fmt(ratio)}x", f"<= {REGRET_RATIO_MAX:g}x", ratio <= REGRET_RATIO_MAX))
    return rows


def _latency_checks(ax_t: list[float], bq_t: list[float], overhead: list[float]
                    ) -> list[tuple[str, str, str, bool]]:
    rows: list[tuple[str, str, str, bool]] = []
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        ours, theirs = _quantile(bq_t, q), _quantile(ax_t, q)
        limit = LATENCY_FACTOR * theirs + LATENCY_SLACK_S
        rows.append((f"suggest() {label}, Branin, {len(bq_t)} calls (Ax get_next_trials "
                     f"{theirs * 1000:.0f} ms)", f"{ours * 1000:.0f} ms",
                     f"<= 1.2x + 50 ms = {limit * 1000:.0f} ms", ours <= limit))
    if overhead:
        rows.append(("suggest() less its step's generation, p50 / p99 (what bo_queue adds)",
                     f"{_quantile(overhead, 0.5) * 1000:.0f} / "
                     f"{_quantile(overhead, 0.99) * 1000:.0f} ms", "-", True))
    return rows


def _many_checks(many: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    rows: list[tuple[str, str, str, bool]] = []
    rows.append((f"{many['studies']} studies at once: completed", f"{many['completed']}",
                 f"all {many['studies']}", many["completed"] == many["studies"]))
    rows.append((f"{many['studies']} studies: slowest / fastest wall time "
                 f"({many['slowest_s']:.1f} s / {many['fastest_s']:.1f} s)",
                 f"{many['starvation']:.2f}x", f"<= {STARVATION_MAX:g}x",
                 many["starvation"] <= STARVATION_MAX))
    rows.append((f"{many['studies']} studies: study steps per second ({many['steps']} steps)",
                 f"{many['steps_per_s']:.2f}", "-", True))
    return rows


def markdown(rows: Sequence[tuple[str, str, str, bool]]) -> str:
    lines = ["| measure | value | target | met |", "|---|---:|---|---|"]
    lines += [f"| {what} | {value} | {target} | {'met' if ok else 'NOT met'} |"
              if target != "-" else f"| {what} | {value} | - | - |"
              for what, value, target, ok in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~3 min)")
    parser.add_argument("--wall-seeds", type=_seeds, default=None,
                        help="seeds of the wall-clock runs (default 0-1; --quick: 0)")
    parser.add_argument("--figures", default=",".join(FIGURES),
                        help=f"comma-separated, of {','.join(FIGURES)} (default all)")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.wall_seeds:
        sizes = Sizes(**{**sizes.__dict__, "wall_seeds": tuple(args.wall_seeds)})
    import torch

    torch.set_num_threads(1)  # as bo_quality.py: Ax in process and the workers alike
    quiet_ax_logs()
    seen: Counter[tuple[str, str, str]] = Counter()
    started = time.perf_counter()
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    if unknown := set(figures) - set(FIGURES):
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}; known: {', '.join(FIGURES)}")
    measured = measure(sizes, figures, seen)
    rows = checks(measured, sizes)
    table = markdown(rows)
    print()
    print(table)
    report = {
        "benchmark": "bo_parallel",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(), "versions": _versions(), "sizes": sizes.__dict__,
        "total_s": time.perf_counter() - started, "measured": measured,
        "targets": [{"measure": w, "value": v, "target": t, "met": ok} for w, v, t, ok in rows],
        "warnings": [{"category": c, "message": msg, "where": where, "count": n}
                     for (c, msg, where), n in seen.most_common()],
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.markdown_out is not None:
        args.markdown_out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
