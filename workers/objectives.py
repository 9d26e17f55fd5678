"""Built-in benchmark objectives, declared as study evaluators (the evaluator contract).

    bench.branin      params x1 in [-5, 10], x2 in [0, 15]       -> {"branin": value}
    bench.hartmann6   params x1..x6 in [0, 1]                     -> {"hartmann6": value}
    bench.zdt1        params x0..x2 in [0, 1]    -> {"f0", "f1"}, both minimised (ZDT1, d=3)
    bench.chartmann6  params x1..x6 in [0, 1]    -> {"hartmann6", "norm"}: Hartmann6 under
                      the constraint norm = ||x||_2 <= 1 (botorch's ConstrainedHartmann)

The first two are minimised: Branin's minimum is 0.397887 (at three points), Hartmann6's is
-3.32237. Each handler takes the evaluator payload

    {"study_id": str, "trial_index": int, "params": {name: value}, "options": {...}}

where "options" may be absent or hold:

    sleep_s    seconds to sleep before answering, to imitate an expensive evaluation
               (slept in slices; a cancelled task stops between slices)
    noise_sd   standard deviation of Gaussian noise added to the value (default: none)
    seed       seeds that noise (default 0)

The noise is drawn from a generator seeded with (seed, study_id, trial_index): a trial
that runs twice (delivery is at-least-once) gets the same value, while two trials of a
study get independent draws. A missing, extra or non-numeric parameter, a value outside
the box, or an unknown option raises `ValidationError`, which fails the trial.

The plain functions (`branin`, `hartmann6`), their minima and their search spaces are
shared with the benchmarks and the tests. This module imports neither torch nor Ax.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bo_queue.context import TaskContext
from bo_queue.errors import ValidationError
from bo_queue.registry import handler

__all__ = [
    "BRANIN_MIN",
    "BRANIN_MINIMIZERS",
    "BRANIN_SPACE",
    "HARTMANN6_MIN",
    "HARTMANN6_MINIMIZER",
    "HARTMANN6_SPACE",
    "NORM_BOUND",
    "ZDT1_REF_POINT",
    "ZDT1_SPACE",
    "bench_branin",
    "bench_chartmann6",
    "bench_hartmann6",
    "bench_zdt1",
    "branin",
    "constrained_hartmann6",
    "hartmann6",
    "zdt1",
]

Space = dict[str, tuple[float, float]]

# -- Branin ------------------------------------------------------------------------------

BRANIN_MIN = 0.397887
BRANIN_SPACE: Space = {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}
BRANIN_MINIMIZERS: tuple[tuple[float, float], ...] = (
    (-math.pi, 12.275),
    (math.pi, 2.275),
    (9.42478, 2.475),
)

_B = 5.1 / (4.0 * math.pi**2)
_C = 5.0 / math.pi
_R = 6.0
_S = 10.0
_T = 1.0 / (8.0 * math.pi)


def branin(x1: float, x2: float) -> float:
    """The Branin-Hoo function (a=1, b=5.1/(4 pi^2), c=5/pi, r=6, s=10, t=1/(8 pi))."""
    return (x2 - _B * x1 * x1 + _C * x1 - _R) ** 2 + _S * (1.0 - _T) * math.cos(x1) + _S


# -- Hartmann6 ---------------------------------------------------------------------------

HARTMANN6_MIN = -3.32237
HARTMANN6_SPACE: Space = {f"x{i}": (0.0, 1.0) for i in range(1, 7)}
HARTMANN6_MINIMIZER: tuple[float, ...] = (
    0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573,
)

_H6_ALPHA = (1.0, 1.2, 3.0, 3.2)
_H6_A = (
    (10.0, 3.0, 17.0, 3.5, 1.7, 8.0),
    (0.05, 10.0, 17.0, 0.1, 8.0, 14.0),
    (3.0, 3.5, 1.7, 10.0, 17.0, 8.0),
    (17.0, 8.0, 0.05, 10.0, 0.1, 14.0),
)
_H6_P = tuple(
    tuple(v * 1e-4 for v in row)
    for row in (
        (1312, 1696, 5569, 124, 8283, 5886),
        (2329, 4135, 8307, 3736, 1004, 9991),
        (2348, 1451, 3522, 2883, 3047, 6650),
        (4047, 8828, 8732, 5743, 1091, 381),
    )
)


def hartmann6(xs: Sequence[float]) -> float:
    """The 6-dimensional Hartmann function on [0, 1]^6 (standard alpha, A and P)."""
    if len(xs) != 6:
        raise ValueError(f"hartmann6 takes 6 coordinates, got {len(xs)}")
    total = 0.0
    for alpha, a_row, p_row in zip(_H6_ALPHA, _H6_A, _H6_P, strict=True):
        inner = sum(a * (x - p) ** 2 for a, x, p in zip(a_row, xs, p_row, strict=True))
        total += alpha * math.exp(-inner)
    return -total


# -- ZDT1 and constrained Hartmann6 (several outcomes) -----------------------------------

ZDT1_SPACE: Space = {f"x{i}": (0.0, 1.0) for i in range(3)}
ZDT1_REF_POINT = (11.0, 11.0)  # botorch's ZDT1.ref_point, for the hypervolume
NORM_BOUND = 1.0  # constrained Hartmann6: feasible when ||x||_2 <= NORM_BOUND


def zdt1(xs: Sequence[float]) -> dict[str, float]:
    """ZDT1 on [0, 1]^d (botorch's definition): f0 = x0, f1 = g (1 - sqrt(x0 / g))."""
    g = 1.0 + 9.0 / (len(xs) - 1) * sum(xs[1:])
    return {"f0": float(xs[0]), "f1": g * (1.0 - math.sqrt(xs[0] / g))}


def constrained_hartmann6(xs: Sequence[float]) -> dict[str, float]:
    """Hartmann6 and the Euclidean norm its constraint bounds (botorch's ConstrainedHartmann;
    the unconstrained minimiser is feasible, so the minimum is still HARTMANN6_MIN)."""
    return {"hartmann6": hartmann6(xs), "norm": math.sqrt(sum(x * x for x in xs))}


# -- payload checking --------------------------------------------------------------------

_OPTIONS = frozenset({"sleep_s", "noise_sd", "seed"})
_SLEEP_SLICE_S = 0.5  # how often a sleeping evaluation looks for a cancellation


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValidationError(f"{what} must be finite, got {value!r}")
    return number


def _params(handler_name: str, payload: Mapping[str, Any], space: Space) -> dict[str, float]:
    """The payload's params, checked against `space`: same names, numbers inside the box."""
    params = payload.get("params")
    if not isinstance(params, Mapping):
        raise ValidationError(
            f"{handler_name}: payload needs 'params', an object with "
            f"{', '.join(space)}; got {params!r}"
        )
    missing = [name for name in space if name not in params]
    extra = sorted(str(name) for name in params if name not in space)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected {', '.join(extra)}")
        raise ValidationError(
            f"{handler_name}: params must be exactly {', '.join(space)} "
            f"({'; '.join(problems)})"
        )
    values: dict[str, float] = {}
    for name, (low, high) in space.items():
        value = _number(params[name], f"{handler_name}: param {name}")
        slack = 1e-9 * (high - low)  # values from an optimizer may land on a bound, give or take
        if not low - slack <= value <= high + slack:
            raise ValidationError(
                f"{handler_name}: param {name}={value!r} is outside [{low:g}, {high:g}]"
            )
        values[name] = value
    return values


def _options(handler_name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    options = payload.get("options")
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValidationError(f"{handler_name}: 'options' must be an object, got {options!r}")
    unknown = sorted(str(key) for key in options if key not in _OPTIONS)
    if unknown:
        raise ValidationError(
            f"{handler_name}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_OPTIONS))}"
        )
    checked: dict[str, Any] = {}
    for key in ("sleep_s", "noise_sd"):
        if key in options:
            value = _number(options[key], f"{handler_name}: option {key}")
            if value < 0:
                raise ValidationError(f"{handler_name}: option {key} must be >= 0, got {value}")
            checked[key] = value
    if "seed" in options:
        seed = options["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValidationError(f"{handler_name}: option seed must be an integer, got {seed!r}")
        checked["seed"] = seed
    return checked


def _noise(payload: Mapping[str, Any], options: Mapping[str, Any]) -> float:
    """Gaussian noise, the same for every run of one trial (at-least-once delivery)."""
    sd = float(options.get("noise_sd", 0.0))
    if sd == 0.0:
        return 0.0
    key = f"{options.get('seed', 0)}:{payload.get('study_id', '')}:{payload.get('trial_index', '')}"
    return random.Random(key).gauss(0.0, sd)  # a str seed is hashed with SHA-512: stable


def _sleep(seconds: float, ctx: TaskContext) -> None:
    """Sleep `seconds`, stopping early (TaskCancelledError) if the task is cancelled."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, _SLEEP_SLICE_S))
        ctx.raise_if_cancelled()


def _evaluate(
    handler_name: str,
    objective: str,
    space: Space,
    fn: Callable[[dict[str, float]], float],
    payload: dict[str, Any],
    ctx: TaskContext,
) -> dict[str, float]:
    return _evaluate_outcomes(
        handler_name, space, lambda xs: {objective: fn(dict(zip(space, xs, strict=True)))},
        payload, ctx,
    )


def _evaluate_outcomes(
    handler_name: str,
    space: Space,
    fn: Callable[[Sequence[float]], dict[str, float]],
    payload: dict[str, Any],
    ctx: TaskContext,
) -> dict[str, float]:
    """The payload checked, `fn` of its params in the space's order, noise added (to each
    outcome), then the sleep option slept."""
    if not isinstance(payload, Mapping):
        raise ValidationError(f"{handler_name}: payload must be an object, got {payload!r}")
    params = _params(handler_name, payload, space)
    options = _options(handler_name, payload)
    noise = _noise(payload, options)
    values = {name: value + noise for name, value in fn([params[n] for n in space]).items()}
    if options.get("sleep_s"):
        _sleep(options["sleep_s"], ctx)
    return values


# -- the handlers ------------------------------------------------------------------------


@handler("bench.branin", queue="evaluate")
def bench_branin(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Evaluate Branin at params {x1, x2}: returns {"branin": value} (minimum 0.397887)."""
    return _evaluate(
        "bench.branin", "branin", BRANIN_SPACE,
        lambda p: branin(p["x1"], p["x2"]), payload, ctx,
    )


@handler("bench.hartmann6", queue="evaluate")
def bench_hartmann6(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Evaluate Hartmann6 at params {x1..x6}: returns {"hartmann6": value} (minimum -3.32237)."""
    return _evaluate(
        "bench.hartmann6", "hartmann6", HARTMANN6_SPACE,
        lambda p: hartmann6([p[name] for name in HARTMANN6_SPACE]), payload, ctx,
    )


@handler("bench.zdt1", queue="evaluate")
def bench_zdt1(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Evaluate ZDT1 (d=3) at params {x0, x1, x2}: returns {"f0", "f1"}, both minimised."""
    return _evaluate_outcomes("bench.zdt1", ZDT1_SPACE, zdt1, payload, ctx)


@handler("bench.chartmann6", queue="evaluate")
def bench_chartmann6(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Evaluate constrained Hartmann6 at {x1..x6}: returns {"hartmann6", "norm"}."""
    return _evaluate_outcomes("bench.chartmann6", HARTMANN6_SPACE, constrained_hartmann6,
                              payload, ctx)
