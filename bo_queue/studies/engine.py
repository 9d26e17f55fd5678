"""The Ax engine: a study's spec becomes an Ax 1.x Client; its state is the Client's JSON
snapshot, zlib-compressed, with the seed re-applied on load (Ax does not persist it).

Imported only where a study step runs: it pulls in Ax, torch and BoTorch.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ax import ChoiceParameterConfig, Client, RangeParameterConfig
from ax.exceptions.core import DataRequiredError

from bo_queue.studies import ax_adapter
from bo_queue.studies.models import (
    Choice,
    Curve,
    Outcome,
    Range,
    StudySpec,
    Trial,
    TrialStatus,
    Value,
)

log = logging.getLogger(__name__)


class GenerationTimeout(Exception):
    """Generation took longer than the strategy's time limit."""


class Engine:
    def __init__(self, spec: StudySpec, client: Client) -> None:
        self.spec = spec
        self.client = client
        self.last_generation_s = 0.0  # the last model-based call's (a study step sets it)

    @classmethod
    def create(cls, spec: StudySpec) -> Engine:
        strategy = spec.strategy
        client = Client(random_seed=strategy.seed)
        client.configure_experiment(
            parameters=[_parameter(p) for p in spec.parameters],
            parameter_constraints=[c.expression() for c in spec.parameter_constraints] or None,
            name=spec.name,
        )
        client.configure_optimization(
            objective=", ".join(("-" if o.minimize else "") + o.name for o in spec.objectives),
            outcome_constraints=[f"{c.metric} {c.op} {c.bound}" for c in spec.outcome_constraints]
            or None,
        )
        client.configure_generation_strategy(
            method=strategy.method,
            initialization_budget=strategy.initial_trials,
            initialization_random_seed=strategy.seed,
        )
        return cls(spec, client)

    @classmethod
    def load(cls, spec: StudySpec, model: bytes) -> Engine:
        client = ax_adapter.restore(json.loads(zlib.decompress(model)), spec.strategy.seed)
        return cls(spec, client)

    def snapshot(self) -> bytes:
        return zlib.compress(json.dumps(ax_adapter.snapshot(self.client)).encode(), 6)

    def generate(
        self, count: int, time_limit_s: float, fallback_seed: int
    ) -> list[tuple[int, dict[str, Value], str]]:
        """Up to `count` new trials as (index, params, generator). Past the time limit the
        rest come from a scrambled Sobol sequence instead, and say so; fewer, or none, while
        Ax waits for the data of running trials."""
        made: list[tuple[int, dict[str, Value], str]] = []
        try:
            with _time_box(time_limit_s):
                while len(made) < count:
                    want = count - len(made)
                    if self.spec.strategy.batch_size:
                        want = min(want, self.spec.strategy.batch_size)
                    batch = self.client.get_next_trials(max_trials=want)
                    if not batch:  # Ax paused its node (too many awaiting data)
                        return made
                    made.extend((index, dict(params), self._drawn_by(index))
                                for index, params in batch.items())
        except GenerationTimeout:
            log.warning(
                "generation passed %.1f s; Sobol for %d trial(s)", time_limit_s, count - len(made)
            )
        except DataRequiredError:
            # The initial design is all generated but too few of it COMPLETED (early-stopped
            # and failed trials are not observations to Ax). Results still to come may
            # satisfy it: wait for them. With none to come, waiting would stall the study.
            if self._running():
                return made
            log.warning("Ax needs more observed trials; Sobol for %d trial(s)", count - len(made))
        for params in sobol_points(self.spec, count - len(made), fallback_seed):
            made.append((self.client.attach_trial(params), params, "sobol-fallback"))
        return made

    def _running(self) -> bool:
        """Whether any trial still waits for its data (Ax's pending points)."""
        return any(not t.status.is_terminal
                   for t in ax_adapter.experiment(self.client).trials.values())

    def attach(self, params: Mapping[str, Value]) -> int:
        return self.client.attach_trial(dict(params))

    def warm_start(self, results: Iterable[tuple[Mapping[str, Value], Mapping[str, Outcome]]]
                   ) -> list[int]:
        """Known results attached as completed trials before the first generation; they
        count towards the initial design (Ax's use_existing_trials_for_initialization)."""
        indices = []
        for params, values in results:
            index = self.attach(params)
            self.complete(index, values)
            indices.append(index)
        ax_adapter.advance(self.client)
        return indices

    def complete(
        self, index: int, values: Mapping[str, Outcome], curve: Curve | None = None
    ) -> None:
        """The final values; with a curve, they are its last progression (Ax's map data)."""
        curve = curve or []
        self._attach(index, curve)
        last = curve[-1][0] if curve else None
        # Client.complete_trial is this and a lookup of the trial's data for a log line,
        # a third of its cost (10-20 ms a trial): every tell and every replayed trial
        self.client.attach_data(index, raw_data=dict(values), progression=last)
        ax_adapter.experiment(self.client).trials[index].mark_completed()

    def early_stop(self, index: int, curve: Curve) -> None:
        """The curve as progressions, then EARLY_STOPPED: as Ax's own early stopping."""
        self._attach(index, curve)
        self.client.mark_trial_early_stopped(index)

    def _attach(self, index: int, curve: Curve) -> None:
        for step, values in curve:
            self.client.attach_data(index, raw_data=dict(values), progression=step)

    def fail(self, index: int, reason: str) -> None:
        self.client.mark_trial_failed(index, failed_reason=reason)

    def catch_up(self, trials: Iterable[Trial], curves: Mapping[int, Curve]) -> int:
        """Replay onto the snapshot what the trial records have and it does not yet: the
        records are the log, the snapshot a checkpoint that steps write only now and then.
        Trials it lacks are attached (at their own index, RUNNING: pending points), then
        every outcome it lacks is told. Returns how many trials it attached or told."""
        experiment = ax_adapter.experiment(self.client)
        applied = 0
        replayed = False
        draws: Counter[str] = Counter()  # of the replayed trials, by the node that drew them
        for trial in sorted(trials, key=lambda t: t.index):
            known = experiment.trials.get(trial.index)
            if known is None:
                index = self.attach(trial.params)
                if index != trial.index:  # records and snapshot of different studies
                    raise RuntimeError(f"replayed trial {trial.index} came back as {index}")
                known, replayed = experiment.trials[index], True
                draws[trial.generator or ""] += 1
                applied += trial.status is TrialStatus.RUNNING
            if known.status.is_terminal:
                continue
            curve = curves.get(trial.index, [])
            if trial.status is TrialStatus.COMPLETED and trial.values is not None:
                self.complete(trial.index, trial.values, curve)
            elif trial.status is TrialStatus.EARLY_STOPPED:
                self.early_stop(trial.index, curve)
            elif trial.status is TrialStatus.FAILED:
                self.fail(trial.index, trial.error or "failed")
            else:
                continue
            applied += 1
        if replayed:
            ax_adapter.skip_draws(self.client, draws)  # Sobol: past the points replayed
            ax_adapter.advance(self.client)  # past the nodes the replayed trials complete
        return applied

    def _drawn_by(self, index: int) -> str:
        """The generation node that drew trial `index` (one batch may span two)."""
        return ax_adapter.drawn_by(self.client, index) or "ax"


def _parameter(p: Range | Choice) -> RangeParameterConfig | ChoiceParameterConfig:
    if isinstance(p, Range):
        return RangeParameterConfig(
            name=p.name,
            bounds=(p.low, p.high),
            parameter_type="int" if p.integer else "float",
            scaling="log" if p.log else "linear",
        )
    return ChoiceParameterConfig(
        name=p.name,
        values=list(p.values),  # type: ignore[arg-type]  # one type, checked by Choice
        parameter_type=p.value_type,
        is_ordered=p.ordered,
    )


@contextmanager
def _time_box(limit_s: float) -> Iterator[None]:
    """Raise GenerationTimeout in this thread after `limit_s`, whichever thread it is (a
    threads-pool worker runs steps off the main thread, where SIGALRM never arrives): a
    timer thread raises it in this one, at its next Python instruction."""
    target, lock, fired = threading.get_ident(), threading.Lock(), threading.Event()
    inside = True

    def expire() -> None:
        with lock:
            if inside:
                fired.set()
                _raise_in(target, GenerationTimeout)

    timer = threading.Timer(limit_s, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            inside = False
        timer.cancel()
        if fired.is_set():
            _raise_in(target, None)  # one still pending must not go off after the box


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Have `exc` raised in a thread (None: take back one not raised yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if exc is None else ctypes.py_object(exc)
    )


def sobol_points(spec: StudySpec, count: int, seed: int) -> list[dict[str, Value]]:
    """Scrambled Sobol points in the space (log scales, integers and choices mapped),
    keeping only those that satisfy the linear constraints."""
    if count <= 0:
        return []
    from scipy.stats import qmc  # type: ignore[import-untyped]

    sampler = qmc.Sobol(d=len(spec.parameters), scramble=True, seed=seed)
    points: list[dict[str, Value]] = []
    for _ in range(64):  # rounds of rejection sampling
        for row in sampler.random(max(2, count * 2)):
            params = {
                p.name: _scale(p, float(u)) for p, u in zip(spec.parameters, row, strict=True)
            }
            if all(c.holds(params) for c in spec.parameter_constraints):
                points.append(params)
                if len(points) == count:
                    return points
    raise RuntimeError("no Sobol point satisfies the parameter constraints")


def _scale(p: Range | Choice, u: float) -> Value:
    if isinstance(p, Choice):
        return p.values[min(int(u * len(p.values)), len(p.values) - 1)]
    if p.log:
        value = math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
    else:
        value = p.low + u * (p.high - p.low)
    return int(min(max(round(value), p.low), p.high)) if p.integer else value


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started
