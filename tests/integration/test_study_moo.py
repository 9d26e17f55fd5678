"""Multi-objective, outcome-constrained and mixed-space studies through Ax on real workers,
against Ax run in process with the same seeds (in a subprocess: torch never loads here).

The budgets are small (Ax steps take seconds on this machine); benchmarks/bo_quality.py
runs the comparison over several seeds, with Sobol and Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bo_queue import (
    BOQueue,
    Choice,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    StudyStatus,
    Trial,
    TrialStatus,
)
from tests.conftest import HANDLERS, ROOT, STUDY_QUEUES
from workers.objectives import HARTMANN6_SPACE, NORM_BOUND, ZDT1_SPACE, zdt1

# ZDT1: 5 Sobol trials and 5 from Ax's multi-objective model (about 25 s through Ax here;
# make benchmark-bo-outcomes compares the 25 trials over three seeds); constrained
# Hartmann6, a 6-d model, 12 (its regret is benchmarks': on one seed it is noise)
ZDT1_TRIALS, TRIALS, INITIAL, SEED = 10, 12, 5, 0
MODEL = "MBM"  # the generator name of Ax's BoTorch node


# tests/conftest.py's `cluster`: two workers of concurrency 2 that serve studies
CLUSTER = {"queues": STUDY_QUEUES, "imports": (HANDLERS, "tests.integration.moo_problems")}


def reference(*args: str) -> subprocess.Popen[str]:
    """tests/integration/moo_problems.py's command line, started now, read with `result`."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.moo_problems", *args], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def result(process: subprocess.Popen[str], stdin: str | None = None) -> object:
    out, _ = process.communicate(stdin, timeout=400)
    assert process.returncode == 0
    return json.loads(out)


def hypervolumes(*fronts: list[list[float]]) -> list[float]:
    """Each set of points' hypervolume, in one process (torch takes seconds to import)."""
    values = result(reference("hv"), json.dumps(fronts))
    assert isinstance(values, list) and len(values) == len(fronts)
    return values


def dominates(a: Trial, b: Trial, names: list[str]) -> bool:
    va = [float(a.values[n]) for n in names]  # type: ignore[index,arg-type]
    vb = [float(b.values[n]) for n in names]  # type: ignore[index,arg-type]
    return all(x <= y for x, y in zip(va, vb, strict=True)) and va != vb


@pytest.mark.timeout(600)
def test_two_objectives_run_through_ax_and_pareto_is_the_non_dominated_trials(
    bq: BOQueue,
) -> None:
    ax = reference("ax", "zdt1", str(ZDT1_TRIALS), str(INITIAL), str(SEED))  # side by side
    study = bq.studies.create(
        "zdt1", [Range(n, lo, hi) for n, (lo, hi) in ZDT1_SPACE.items()],
        [Objective("f0"), Objective("f1")], evaluator="bench.zdt1",
        strategy=Strategy(initial_trials=INITIAL, max_trials=ZDT1_TRIALS, parallelism=1,
                          seed=SEED),
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=500)
    assert done.status is StudyStatus.COMPLETED, done.message
    trials = bq.studies.trials(study.id, TrialStatus.COMPLETED)
    assert len(trials) == ZDT1_TRIALS
    assert MODEL in {t.generator for t in trials}  # Ax's multi-objective model made trials

    front = bq.studies.pareto(study.id)
    names = ["f0", "f1"]
    on_front = {t.index for t in front}
    assert on_front == {t.index for t in trials
                        if not any(dominates(o, t, names) for o in trials)}

    theirs_points = result(ax)
    assert isinstance(theirs_points, list) and len(theirs_points) == ZDT1_TRIALS
    ours, theirs = hypervolumes(
        [[float(t.values[n]) for n in names] for t in trials],  # type: ignore[index,arg-type]
        [[p[n] for n in names] for p in theirs_points],
    )
    assert ours >= 0.95 * theirs, (ours, theirs)


@pytest.mark.timeout(600)
def test_ask_tell_with_two_objectives_generates_from_the_model(bq: BOQueue) -> None:
    study = bq.studies.create(
        "zdt1-asktell", [Range(n, lo, hi) for n, (lo, hi) in ZDT1_SPACE.items()],
        [Objective("f0"), Objective("f1")],
        strategy=Strategy(initial_trials=3, max_trials=5, seed=SEED),
    )
    for _ in range(5):
        [trial] = bq.studies.suggest(study.id, timeout=300)
        assert bq.studies.report(
            study.id, trial.index, zdt1([float(trial.params[n]) for n in ZDT1_SPACE])  # type: ignore[arg-type]
        )
    done = bq.studies.wait(study.id, timeout=60)
    assert done.status is StudyStatus.COMPLETED
    trials = bq.studies.trials(study.id)
    assert [t.generator == MODEL for t in trials] == [False] * 3 + [True] * 2
    assert bq.studies.pareto(study.id)


@pytest.mark.timeout(600)
def test_outcome_constraints_run_through_ax_and_best_is_feasible(bq: BOQueue) -> None:
    study = bq.studies.create(
        "chartmann6", [Range(n, lo, hi) for n, (lo, hi) in HARTMANN6_SPACE.items()],
        [Objective("hartmann6")], evaluator="bench.chartmann6",
        outcome_constraints=[OutcomeConstraint(metric="norm", op="<=", bound=NORM_BOUND)],
        strategy=Strategy(initial_trials=INITIAL, max_trials=TRIALS, parallelism=1, seed=SEED),
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=500)
    assert done.status is StudyStatus.COMPLETED, done.message
    trials = bq.studies.trials(study.id, TrialStatus.COMPLETED)
    assert MODEL in {t.generator for t in trials}

    feasible = [t for t in trials if float(t.values["norm"]) <= NORM_BOUND]  # type: ignore[index,arg-type]
    best = bq.studies.best(study.id)
    assert feasible and best is not None
    assert best.index == min(feasible, key=lambda t: float(t.values["hartmann6"])).index  # type: ignore[index,arg-type]
    # Ax holds the constraint: the study's Ax state says so (read in a subprocess: torch)
    snapshot = bq.studies.store.load(study.id).model
    assert snapshot is not None
    assert result(reference("constraints"), snapshot.hex()) == [["norm", "<=", NORM_BOUND]]
    # Regret against Ax in process is benchmarks' (make benchmark-bo-outcomes, several
    # seeds): on one seed of 12 trials it spans 1.4-2.5 for either, run to run.


@pytest.mark.timeout(600)
def test_a_mixed_space_with_a_linear_constraint_reaches_the_model_in_time(bq: BOQueue) -> None:
    study = bq.studies.create(
        "mixed",
        [Range("lr", 1e-4, 1e-1, log=True), Range("layers", 1, 6, integer=True),
         Choice("act", ["relu", "tanh", "gelu"]), Range("dropout", 0.0, 0.5),
         Range("momentum", 0.0, 1.0)],
        [Objective("loss")], evaluator="moo.mixed",
        parameter_constraints=[LinearConstraint(coefficients={"dropout": 1.0, "momentum": 1.0},
                                                bound=1.0)],
        # The model's step on this space takes up to a minute on a quiet 2-vCPU machine and
        # took over 90 s beside the rest of the suite on a slower one: the time box is set
        # well above that, so that only a generation that never ends would fall back.
        strategy=Strategy(initial_trials=3, max_trials=4, parallelism=1, seed=SEED,
                          generation_time_limit_s=300),
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=560)
    assert done.status is StudyStatus.COMPLETED, done.message
    trials = sorted(bq.studies.trials(study.id), key=lambda t: t.index)
    assert [t.generator == MODEL for t in trials] == [False] * 3 + [True]  # no fallback
    for t in trials:
        p = t.params
        assert isinstance(p["layers"], int) and p["act"] in {"relu", "tanh", "gelu"}
        assert 1e-4 <= float(p["lr"]) <= 1e-1  # type: ignore[arg-type]
        assert float(p["dropout"]) + float(p["momentum"]) <= 1.0 + 1e-9  # type: ignore[arg-type]
