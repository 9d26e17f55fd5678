"""The one place that touches Ax's private API: the Client's JSON snapshot (how a study's
model is saved between steps), its seed, its experiment and its generation strategy.
tests/unit/test_adapters.py checks these names against the pinned Ax, so an upgrade that
moves them fails there first, not in a running study.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ax import Client
from ax.adapter.registry import Generators
from ax.core.experiment import Experiment
from ax.exceptions.core import DataRequiredError


def snapshot(client: Client) -> dict[str, Any]:
    """The Client's whole state (experiment, generation strategy) as JSON-ready data."""
    state: dict[str, Any] = client._to_json_snapshot()  # noqa: SLF001
    return state


def restore(state: dict[str, Any], seed: int | None) -> Client:
    """A Client from `snapshot`'s data; the seed is not in the snapshot, so it is set again."""
    client = Client._from_json_snapshot(state)  # noqa: SLF001
    client._random_seed = seed  # noqa: SLF001
    return client


def generation_node(client: Client) -> str:
    """The name of the generation node Ax is at (Sobol, BoTorch, ...), or "" if unknown."""
    strategy = client._maybe_generation_strategy  # noqa: SLF001  (None before one is set)
    return str(getattr(strategy, "current_node_name", "") or "")


def drawn_by(client: Client, index: int) -> str:
    """The name of the generation node that drew trial `index`, or "" if unknown."""
    runs = experiment(client).trials[index].generator_runs
    return str(getattr(runs[0], "_generation_node_name", "") or "") if runs else ""


def advance(client: Client) -> None:
    """Move the generation strategy past the nodes whose criteria the experiment already
    meets. Ax checks only when it generates, and then one node late: after trials were
    attached, the first new trial would still come from a skipped node."""
    strategy = client._maybe_generation_strategy  # noqa: SLF001
    if strategy is not None:
        # DataRequiredError: the node's budget is met but too few trials have data: it stays
        with contextlib.suppress(DataRequiredError):
            strategy._maybe_transition_to_next_node()  # noqa: SLF001


def experiment(client: Client) -> Experiment:
    """The Client's Experiment (its trials and their statuses)."""
    found: Experiment = client._experiment  # noqa: SLF001
    return found


def skip_draws(client: Client, draws: Mapping[str, int]) -> None:
    """Move each quasi-random node (by name) on by that many draws. Trials its draws made
    in steps whose snapshot was lost come back attached, which Ax does not count as its
    draws: it would draw those points again (and dedups only against unfailed trials)."""
    strategy = client._maybe_generation_strategy  # noqa: SLF001
    if strategy is None:
        return
    for node in strategy._nodes:  # noqa: SLF001
        count = draws.get(node.name, 0)
        specs = [s for s in node.generator_specs if s.generator_enum is Generators.SOBOL]
        if count <= 0 or not specs:
            continue
        last = next((run for run in reversed(strategy._generator_runs)  # noqa: SLF001
                     if run._generation_node_name == node.name), None)  # noqa: SLF001
        state = last._generator_state_after_gen if last is not None else None  # noqa: SLF001
        if state is not None and "init_position" in state:  # where Ax's next fit starts
            state["init_position"] = int(state["init_position"]) + count
        else:  # no draw of its own yet: its generator starts that far in
            for spec in specs:
                start = int(spec.generator_kwargs.get("init_position", 0))
                spec.generator_kwargs["init_position"] = start + count
