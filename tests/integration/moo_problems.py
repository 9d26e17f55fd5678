"""For tests/integration/test_study_moo.py: ZDT1 and constrained Hartmann6 (the bench.zdt1
and bench.chartmann6 evaluators of workers.objectives) run by Ax in process, in a subprocess
(`python -m tests.integration.moo_problems ...`) so torch never loads in the pytest process
(tests/unit/test_adapters.py says why), hypervolumes, and an evaluator of a mixed space:

    moo.mixed       params lr (log), layers (int), act (choice), dropout, momentum -> {"loss"}
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from bo_queue import TaskContext, handler
from workers.objectives import (
    HARTMANN6_SPACE,
    NORM_BOUND,
    ZDT1_REF_POINT,
    ZDT1_SPACE,
    zdt1,
)
from workers.objectives import constrained_hartmann6 as chartmann6


@handler("moo.mixed", queue="evaluate")
def mixed_handler(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """A loss over test_study_moo's mixed space: lr (log), layers (int), act (choice),
    dropout and momentum (dropout + momentum <= 1)."""
    p = payload["params"]
    penalty = {"relu": 0.0, "tanh": 0.3, "gelu": 0.1}[p["act"]]
    return {"loss": (math.log10(float(p["lr"])) + 2.5) ** 2 + (int(p["layers"]) - 3) ** 2
            + penalty + float(p["dropout"]) + (float(p["momentum"]) - 0.5) ** 2}


def ax_in_process(problem: str, trials: int, initial: int, seed: int) -> list[dict[str, float]]:
    """The outcomes of `trials` trials of Ax's Client, one at a time, as a study runs them."""
    from ax import Client, RangeParameterConfig

    space, fn, objective, constraints = (
        (ZDT1_SPACE, zdt1, "-f0, -f1", None) if problem == "zdt1"
        else (HARTMANN6_SPACE, chartmann6, "-hartmann6", [f"norm <= {NORM_BOUND}"])
    )
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name=n, bounds=b, parameter_type="float") for n, b in space.items()
    ])
    client.configure_optimization(objective=objective, outcome_constraints=constraints)
    client.configure_generation_strategy(
        method="fast", initialization_budget=initial, initialization_random_seed=seed
    )
    outcomes: list[dict[str, float]] = []
    while len(outcomes) < trials:
        for index, params in client.get_next_trials(max_trials=1).items():
            values = fn([float(params[n]) for n in space])
            client.complete_trial(trial_index=index, raw_data=dict(values))
            outcomes.append(values)
    return outcomes


def outcome_constraints(snapshot_hex: str) -> list[list[Any]]:
    """The outcome constraints in the optimization config of a study's Ax snapshot (as
    RedisStorage holds it, zlib-compressed JSON), as [metric, "<=" or ">=", bound]."""
    import zlib

    from ax.core.types import ComparisonOp

    from bo_queue.studies import ax_adapter

    state = json.loads(zlib.decompress(bytes.fromhex(snapshot_hex)))
    config = ax_adapter.experiment(ax_adapter.restore(state, None)).optimization_config
    assert config is not None
    return [[*c.metric_names, "<=" if c.op is ComparisonOp.LEQ else ">=", c.bound]
            for c in config.outcome_constraints]


def hypervolume(points: list[tuple[float, float]]) -> float:
    """botorch's hypervolume of minimised (f0, f1) points against ZDT1's reference point."""
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    y = -torch.tensor(points, dtype=torch.double)  # botorch maximises
    ref = -torch.tensor(ZDT1_REF_POINT, dtype=torch.double)
    front = y[is_non_dominated(y)]
    return float(Hypervolume(ref_point=ref).compute(front))


if __name__ == "__main__":
    # ax <problem> <trials> <initial> <seed>  |  hv (reads [[[f0, f1], ...], ...] from stdin)
    #  |  constraints (reads a study's Ax snapshot, hex, from stdin)
    import torch

    torch.set_num_threads(1)  # as the study workers; see benchmarks/bo_quality.py
    if sys.argv[1] == "ax":
        name, n, init, s = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(ax_in_process(name, n, init, s)))
    elif sys.argv[1] == "constraints":
        print(json.dumps(outcome_constraints(sys.stdin.read())))
    else:
        fronts = json.loads(sys.stdin.read())
        print(json.dumps([hypervolume([tuple(p) for p in points]) for points in fronts]))
