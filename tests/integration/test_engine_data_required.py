"""The Ax engine when Ax's initial design is all generated but too few of its trials
COMPLETED (early-stopped ones are no observations to Ax): it waits for running trials'
data, falls back to Sobol when none is to come, and replaying such a study onto a
snapshot does not raise; and a replay onto an older snapshot moves Sobol past the points
it replays. (Ax in process, no Redis: what a study step calls. Not among
the unit tests: they assert, in their process, that the facade never imports Ax.)"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import pytest

from bo_queue import Objective, Range, Strategy
from bo_queue.studies.models import StudySpec, Trial, TrialStatus

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # Ax's and BoTorch's, at import
    from bo_queue.studies import ax_adapter
    from bo_queue.studies.engine import Engine

# Ax calls its own deprecated methods (add_tracking_metric, ...); pytest makes them errors.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPEC = StudySpec(
    name="data-required", parameters=[Range("x", 0.0, 1.0)], objectives=[Objective("loss")],
    strategy=Strategy(initial_trials=4, max_trials=8, seed=0),
)


def initial_design_mostly_stopped() -> tuple[Engine, list[tuple[int, dict[str, float], str]]]:
    """The initial design (the center, three Sobol points; each trial names the node that
    drew it, though one batch spans both): one COMPLETED, two EARLY_STOPPED, one still
    running. Ax's initial design needs two observed trials before its model node."""
    engine = Engine.create(SPEC)
    made = engine.generate(4, time_limit_s=60, fallback_seed=1)
    assert [generator for _, _, generator in made] == ["CenterOfSearchSpace"] + ["Sobol"] * 3
    engine.complete(0, {"loss": 0.5})
    engine.early_stop(1, [(0, {"loss": 2.0})])
    engine.early_stop(2, [(0, {"loss": 3.0})])
    return engine, made


def test_it_waits_for_a_running_trials_data_rather_than_fail() -> None:
    engine, _ = initial_design_mostly_stopped()
    assert engine.generate(1, time_limit_s=60, fallback_seed=1) == []
    engine.complete(3, {"loss": 0.4})  # the second observation: the model may go on
    [(index, _, generator)] = engine.generate(1, time_limit_s=60, fallback_seed=1)
    assert index == 4 and generator != "sobol-fallback"


def test_with_no_data_to_come_the_rest_is_sobol() -> None:
    engine, _ = initial_design_mostly_stopped()
    engine.early_stop(3, [(0, {"loss": 4.0})])
    made = engine.generate(2, time_limit_s=60, fallback_seed=1)
    assert [(index, generator) for index, _, generator in made] == [
        (4, "sobol-fallback"), (5, "sobol-fallback")
    ]
    assert all(0.0 <= float(params["x"]) <= 1.0 for _, params, _ in made)


def test_replaying_onto_a_snapshot_stays_at_the_initial_node() -> None:
    """What a step on another worker does: the snapshot was taken before any result, the
    trial records carry the outcomes since."""
    engine = Engine.create(SPEC)
    made = engine.generate(4, time_limit_s=60, fallback_seed=1)
    snapshot = engine.snapshot()
    now = datetime.now(UTC)
    statuses = [TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.EARLY_STOPPED,
                TrialStatus.RUNNING]
    records = [
        Trial(index=index, params=params, status=status, generator=generator, created_at=now,
              values={"loss": float(index)} if status is not TrialStatus.RUNNING else None)
        for (index, params, generator), status in zip(made, statuses, strict=True)
    ]
    replayed = Engine.load(SPEC, snapshot)
    curves = {1: [(0, {"loss": 2.0})], 2: [(0, {"loss": 3.0})]}
    assert replayed.catch_up(records, curves) == 3
    assert ax_adapter.generation_node(replayed.client) == "Sobol"
    trials = ax_adapter.experiment(replayed.client).trials
    assert [trials[i].status.name for i in range(4)] == [s.name for s in statuses]
    assert replayed.generate(1, time_limit_s=60, fallback_seed=1) == []


@pytest.mark.parametrize("before", [0, 2], ids=["no-draw-in-the-snapshot", "two-draws"])
def test_a_replay_onto_an_older_snapshot_moves_sobol_past_the_replayed_draws(
    before: int,
) -> None:
    """Steps whose snapshot was lost (a worker killed after saving their trials) drew
    Sobol points that come back as replayed trials; Ax dedups only against trials that
    did not fail, so without moving Sobol on it would draw a failed trial's point again."""
    spec = SPEC.model_copy(update={"strategy": Strategy(initial_trials=8, max_trials=8, seed=3)})
    engine = Engine.create(spec)
    engine.generate(before, time_limit_s=60, fallback_seed=1)
    older = engine.snapshot()
    lost = engine.generate(3, time_limit_s=60, fallback_seed=1)  # its snapshot is lost
    now = datetime.now(UTC)
    records = [Trial(index=i, params=p, generator=g, created_at=now,
                     status=TrialStatus.FAILED, error="lease ran out") for i, p, g in lost]
    replayed = Engine.load(spec, older)
    replayed.catch_up(records, {})
    again = replayed.generate(3, time_limit_s=60, fallback_seed=1)
    assert [index for index, _, _ in again] == [before + 3, before + 4, before + 5]
    seen = {tuple(params.values()) for _, params, _ in lost}
    assert not seen & {tuple(params.values()) for _, params, _ in again}
    continued = engine.generate(3, time_limit_s=60, fallback_seed=1)  # as if never lost
    assert [p for _, p, _ in again] == [p for _, p, _ in continued]
