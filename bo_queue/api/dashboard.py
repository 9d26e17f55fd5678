"""A study's dashboard: one HTML page, an HTML fragment it polls, and the same data as JSON.

    GET /studies/{id}/dashboard            the page (name, status, counts, trials table,
                                           convergence and parameter plots)
    GET /studies/{id}/dashboard/fragment   the live part of the page, which the page
                                           fetches every POLL_MS and swaps in until the
                                           study is COMPLETED or FAILED
    GET /studies/{id}/dashboard/data       status, counts, trials, best-so-far series
    GET /dashboard                         the index: the namespace's studies, each with
                                           its status, trials, best value and a link

All of them take the caller's API key like every route (`current_bq`); a browser opens the
page with `?key=...` and the page's own links and fetches carry it on. Plain HTML with
server-rendered SVG (bo_queue.api.svg): no CDN, no external script, a few lines of inline
JavaScript for the polling. Elements tests and scripts can rely on: `#summary` (with
`data-status`, `data-completed`, `data-failed`, `data-running`, `data-total`, `data-max`,
`data-terminal`), `#trials` (one `tbody tr` per trial, `data-index`, `data-status`),
`#convergence` (per objective an SVG whose `path.series[data-series="best so far"]` has one
point per feasible completed trial) and `#parameters`; a study of several objectives has
`#pareto-front` (`svg#pareto`: a circle per completed trial, `circle.front` and one
`path.front` point per trial on the Pareto front) and /data's "pareto" (their indices).
A closed loop's trials show their evaluation task (`td.task[data-task-id]`: its name,
description, metadata, created_by); the page's `#namespace` (`data-namespace`, a
`span[data-key]` per key) shows the namespace's metadata, and /data has both.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from bo_queue.api import svg
from bo_queue.api.deps import api_key, current_bq
from bo_queue.client import BOQueue
from bo_queue.core.records import TaskInfo
from bo_queue.errors import BrokerUnavailableError, StudyNotFoundError
from bo_queue.studies import scoring
from bo_queue.studies.models import (
    Choice,
    Curve,
    Outcome,
    Range,
    Study,
    Trial,
    TrialStatus,
    Value,
    mean,
)
from bo_queue.studies.storage import plain

router = APIRouter(tags=["dashboard"])

POLL_MS = 1000  # how often an open page asks for a new fragment while the study runs
NO_STORE = {"Cache-Control": "no-store"}

Queue = Annotated[BOQueue, Depends(current_bq)]


# -- the data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BestPoint:
    index: int  # the trial
    value: float  # its observed mean
    best: float  # the best observed mean up to and including it


@dataclass
class Snapshot:
    """A study and its trials, read in that order (so a terminal status implies the trials
    are final), and what the page shows about them."""

    study: Study
    trials: list[Trial]
    counts: Counter[str] = field(default_factory=Counter)
    best_so_far: dict[str, list[BestPoint]] = field(default_factory=dict)
    best: Trial | None = None  # single objective only
    front: list[Trial] = field(default_factory=list)  # several objectives: the Pareto front
    tasks: dict[str, TaskInfo] = field(default_factory=dict)  # trials' evaluation tasks
    curves: dict[int, Curve] = field(default_factory=dict)  # intermediate values by trial
    namespace: dict[str, Any] | None = None  # its name and metadata (page and data only)

    @property
    def completed(self) -> int:
        return self.counts[TrialStatus.COMPLETED.value]

    @property
    def terminal(self) -> bool:
        return self.study.status.terminal


def snapshot(bq: BOQueue, study_id: str, namespace: bool = False) -> Snapshot:
    """Everything the dashboard shows, or 404 / 503; with `namespace`, the namespace's
    metadata too (the page's header, not the fragment it polls)."""
    try:
        study = bq.studies.get(study_id)
        trials = bq.studies.store.trials(study_id)
        curves = bq.studies.store.curves(study_id)
        ids = [t.task_id for t in trials if t.task_id]  # one pipelined read for them all
        tasks = {i: info for i, info in zip(ids, bq.records.get_many(ids), strict=True)
                 if info is not None}
        metadata = bq.metadata() if namespace else None
    except StudyNotFoundError:
        raise HTTPException(status_code=404, detail=f"no study with id {study_id!r}") from None
    except BrokerUnavailableError:
        unavailable = "Redis is unavailable; try again shortly"
        raise HTTPException(status_code=503, detail=unavailable) from None
    snap = Snapshot(study, trials, Counter(t.status.value for t in trials), tasks=tasks,
                    curves=curves)
    if metadata is not None:
        snap.namespace = {"name": bq.settings.namespace, "metadata": metadata}
    spec = study.spec
    feasible = scoring.feasible_trials(spec, trials)
    for objective in spec.objectives:
        better = min if objective.minimize else max
        series: list[BestPoint] = []
        for trial in feasible:
            value = scoring.mean(trial, objective.name)
            if value is None:
                continue
            best = value if not series else better(series[-1].best, value)
            series.append(BestPoint(trial.index, value, best))
        snap.best_so_far[objective.name] = series
    if len(spec.objectives) == 1:
        snap.best = scoring.best(spec, trials)
    else:
        snap.front = scoring.pareto(spec, trials)
    return snap


def as_json(snap: Snapshot) -> dict[str, Any]:
    study, spec = snap.study, snap.study.spec
    return {
        "study": {
            "id": study.id,
            "name": study.name,
            "status": study.status.value,
            "terminal": snap.terminal,
            "message": study.message,
            "mode": study.mode,
            "evaluator": spec.evaluator,
            "max_trials": spec.strategy.max_trials,
            "completed_trials": study.completed_trials,
            "failed_trials": study.failed_trials,
            "running_trials": study.running_trials,
            "early_stopped_trials": study.early_stopped_trials,
            "description": study.description,
            "metadata": study.metadata,
            "warm_start_from": study.warm_start_from,
            "iteration": study.iteration,
            "created_at": study.created_at.isoformat(),
            "updated_at": study.updated_at.isoformat(),
        },
        "objectives": [o.model_dump(mode="json") for o in spec.objectives],
        "parameters": [p.model_dump(mode="json") for p in spec.parameters],
        "counts": {
            "total": len(snap.trials),
            **{s.value: snap.counts[s.value] for s in TrialStatus},
        },
        "trials": [{**t.model_dump(mode="json"), "task": _task_json(snap, t)}
                   for t in snap.trials],
        "best_so_far": {
            name: [{"index": p.index, "value": p.value, "best": p.best} for p in points]
            for name, points in snap.best_so_far.items()
        },
        "best": None if snap.best is None else snap.best.model_dump(mode="json"),
        "pareto": [t.index for t in snap.front],
        "curves": {str(index): [[step, plain(values)] for step, values in curve]
                   for index, curve in snap.curves.items()},
        "namespace": snap.namespace,
    }


def _task_json(snap: Snapshot, trial: Trial) -> dict[str, Any] | None:
    """A trial's evaluation task: its id, state, name, description, metadata, created_by."""
    info = snap.tasks.get(trial.task_id or "")
    if info is None:
        return None
    return info.model_dump(mode="json", include={
        "id", "state", "name", "description", "metadata", "created_by"})


# -- the routes ---------------------------------------------------------------------------


@router.get("/studies/{study_id}/dashboard", response_class=HTMLResponse)
def dashboard_page(study_id: str, request: Request, bq: Queue) -> HTMLResponse:
    """The dashboard page; it keeps itself up to date while the study runs."""
    snap = snapshot(bq, study_id, namespace=True)
    return HTMLResponse(render_page(snap, _key_query(request)), headers=NO_STORE)


@router.get("/studies/{study_id}/dashboard/fragment", response_class=HTMLResponse)
def dashboard_fragment(study_id: str, bq: Queue) -> HTMLResponse:
    """The live part of the page: status line, charts and trials table."""
    return HTMLResponse(render_fragment(snapshot(bq, study_id)), headers=NO_STORE)


@router.get("/studies/{study_id}/dashboard/data")
def dashboard_data(study_id: str, bq: Queue) -> JSONResponse:
    """Status, counts, trials and each objective's best-so-far series, as JSON."""
    return JSONResponse(as_json(snapshot(bq, study_id, namespace=True)), headers=NO_STORE)


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_index(request: Request, bq: Queue) -> HTMLResponse:
    """The namespace's studies, newest first: status, trials, best value, a link to each."""
    try:
        studies = sorted(bq.studies.list(), key=lambda s: s.created_at, reverse=True)
        rows = [(s, bq.studies.store.trials(s.id)) for s in studies]
    except BrokerUnavailableError:
        unavailable = "Redis is unavailable; try again shortly"
        raise HTTPException(status_code=503, detail=unavailable) from None
    return HTMLResponse(render_index(bq.settings.namespace, rows, _key_query(request)),
                        headers=NO_STORE)


def _key_query(request: Request) -> str:
    """`?key=...` for the page's own links, so a browser can follow them."""
    key = api_key(request)
    return f"?key={quote(key, safe='')}" if key else ""


# -- HTML ---------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin: 0 0 .2em; font-size: 1.5em; }
.meta { color: #555; margin-bottom: 1em; }
.meta a { color: #1f5fa8; }
#summary { font-size: 1.1em; padding: .5em .8em; border-radius: 6px; background: #f3f6fa;
           margin-bottom: 1em; }
.badge { font-weight: bold; padding: .1em .5em; border-radius: 4px; color: #fff;
         background: #777; }
.badge.ACTIVE, .badge.INITIALIZING { background: #1f77b4; }
.badge.COMPLETED { background: #2ca02c; }
.badge.FAILED { background: #d62728; }
.badge.PAUSED { background: #ff7f0e; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 1em; }
.charts svg { border: 1px solid #e4e4e4; border-radius: 4px; background: #fafafa; }
h2 { font-size: 1.15em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
tr.best td { background: #eaf7ea; font-weight: bold; }
tr.FAILED td, tr.ABANDONED td { color: #a33; }
tr.RUNNING td { color: #666; font-style: italic; }
.note { color: #888; font-size: .9em; }
"""

# Polls the fragment and swaps it in; stops once #summary says the study has ended (or the
# server says the key or the study is gone).
_SCRIPT = """
(function () {
  var url = %s, every = %d, live = document.getElementById("live");
  var note = document.getElementById("poll-note");
  function ended() {
    var s = document.getElementById("summary");
    return s !== null && s.getAttribute("data-terminal") === "true";
  }
  function tick() {
    if (ended()) { note.textContent = "final"; return; }
    fetch(url, {cache: "no-store"}).then(function (r) {
      if (r.status === 401 || r.status === 404) { throw new Error("stop " + r.status); }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null) { live.innerHTML = html; }
      note.textContent = ended() ? "final" : "live, every " + every / 1000 + " s";
      if (!ended()) { setTimeout(tick, every); }
    }).catch(function (e) {
      if (String(e.message).indexOf("stop") === 0) { note.textContent = "stopped: " + e.message; }
      else { note.textContent = "retrying"; setTimeout(tick, every); }
    });
  }
  if (ended()) { note.textContent = "final"; return; }
  note.textContent = "live, every " + every / 1000 + " s";
  setTimeout(tick, every);
})();
"""


def render_page(snap: Snapshot, key_query: str = "") -> str:
    study, spec = snap.study, snap.study.spec
    base = f"/studies/{quote(study.id, safe='')}/dashboard"
    fragment_url = f"{base}/fragment{key_query}"
    data_url = f"{base}/data{key_query}"
    goals = ", ".join(
        f"{'minimize' if o.minimize else 'maximize'} {o.name}" for o in spec.objectives
    )
    meta = [
        f"study <code>{escape(study.id)}</code>",
        escape(goals),
        f"evaluator <code>{escape(spec.evaluator)}</code>" if spec.evaluator else "ask/tell",
        f"created {_when(study.created_at)}",
        f'<a href="{escape(data_url)}">JSON</a>',
        f'<a id="index-link" href="{escape("/dashboard" + key_query)}">all studies</a>',
        '<span id="poll-note" class="note"></span>',
    ]
    script = _SCRIPT % (_js_string(fragment_url), POLL_MS)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(study.name)} · bo_queue study</title>"
        f"<style>{_STYLE}</style></head><body>"
        f'<h1 id="study-name">{escape(study.name)}</h1>'
        f'<div class="meta">{" · ".join(meta)}</div>'
        f"{_described(study)}"
        f"{_namespace(snap)}"
        f'<div id="live">{render_fragment(snap)}</div>'
        f"<script>{script}</script>"
        "</body></html>\n"
    )


def _described(study: Study) -> str:
    """`#study-description` (its text) and `#study-metadata` (a `span[data-key]` per key):
    what the study's creator said of it; nothing when neither was given."""
    if not study.description and not study.metadata:
        return ""
    items = "".join(f'<span data-key="{escape(k)}">{escape(k)}={escape(_fmt_json(v))}</span> '
                    for k, v in sorted(study.metadata.items()))
    return (f'<div class="meta"><span id="study-description">{escape(study.description)}'
            f'</span> <span id="study-metadata">{items}</span></div>')


def render_index(namespace: str, rows: list[tuple[Study, list[Trial]]],
                 key_query: str = "") -> str:
    """`#studies`: a `tr[data-study-id][data-status]` per study, its best value (one
    objective, in `td.best[data-value]`) or its Pareto front's size (several)."""
    body = []
    for study, trials in rows:
        spec = study.spec
        if len(spec.objectives) == 1:
            value = scoring.best_value(spec, trials)
            best = (f'<td class="best" data-value="{value!r}">{escape(spec.objectives[0].name)} = '
                    f"{value:.4g}</td>" if value is not None else '<td class="best"></td>')
        else:
            best = f'<td class="best">{len(scoring.pareto(spec, trials))} on the front</td>'
        link = f"/studies/{quote(study.id, safe='')}/dashboard{key_query}"
        status = study.status.value
        body.append(
            f'<tr data-study-id="{escape(study.id)}" data-status="{status}">'
            f'<td class="text"><a href="{escape(link)}">{escape(study.name)}</a></td>'
            f'<td class="text"><span class="badge {status}">{status}</span></td>'
            f"<td>{study.completed_trials} of {spec.strategy.max_trials}</td>"
            f"<td>{study.failed_trials}</td>{best}"
            f'<td class="text">{escape(", ".join(o.name for o in spec.objectives))}</td>'
            f"<td>{_when(study.created_at)}</td></tr>"
        )
    empty = '<tr class="empty"><td class="text" colspan="7">no studies yet</td></tr>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(namespace)} · bo_queue studies</title>"
        f"<style>{_STYLE}</style></head><body>"
        f'<h1>Studies</h1><div class="meta">namespace <code>{escape(namespace)}</code> · '
        f"{len(rows)} studies · {_when(datetime.now(UTC))}</div>"
        '<table id="studies"><thead><tr><th class="text">study</th><th class="text">status'
        '</th><th>completed</th><th>failed</th><th>best</th><th class="text">objectives</th>'
        f'<th>created</th></tr></thead><tbody>{"".join(body) or empty}</tbody></table>'
        "</body></html>\n"
    )


def _namespace(snap: Snapshot) -> str:
    """The namespace's name and metadata (its own keys; not the two timestamps)."""
    if snap.namespace is None:
        return ""
    metadata = {k: v for k, v in snap.namespace["metadata"].items()
                if k not in ("initialized_at", "last_updated")}
    items = "".join(f'<span data-key="{escape(k)}">{escape(k)}={escape(_fmt_json(v))}</span> '
                    for k, v in sorted(metadata.items()))
    return (f'<div id="namespace" class="meta" data-namespace="{escape(snap.namespace["name"])}">'
            f'namespace <code>{escape(snap.namespace["name"])}</code>'
            f'{" · " + items if items else ""}</div>')


def render_fragment(snap: Snapshot) -> str:
    return "".join([
        _summary(snap),
        '<h2>Convergence</h2><div id="convergence" class="charts">',
        *_convergence(snap),
        "</div>",
        *(['<h2>Pareto front</h2><div id="pareto-front" class="charts">', _pareto(snap),
           "</div>"] if len(snap.study.spec.objectives) >= 2 else []),
        '<h2>Parameters</h2><div id="parameters" class="charts">',
        *_parameter_plots(snap),
        "</div>",
        *(['<h2>Learning curves</h2><div id="curves" class="charts">', _curves(snap), "</div>"]
          if snap.curves else []),
        f"<h2>Trials ({len(snap.trials)})</h2>",
        _table(snap),
    ])


def _summary(snap: Snapshot) -> str:
    study = snap.study
    status = study.status.value
    maximum = study.spec.strategy.max_trials
    counts = snap.counts
    attrs = {
        "data-status": status,
        "data-completed": snap.completed,
        "data-failed": counts[TrialStatus.FAILED.value],
        "data-running": counts[TrialStatus.RUNNING.value],
        "data-stopped": counts[TrialStatus.EARLY_STOPPED.value],
        "data-total": len(snap.trials),
        "data-max": maximum,
        "data-terminal": "true" if snap.terminal else "false",
    }
    parts = [
        f"{snap.completed} of {maximum} completed",
        f"{counts[TrialStatus.FAILED.value]} failed",
        f"{counts[TrialStatus.RUNNING.value]} running",
    ]
    if counts[TrialStatus.EARLY_STOPPED.value]:
        parts.append(f"{counts[TrialStatus.EARLY_STOPPED.value]} early stopped")
    if counts[TrialStatus.ABANDONED.value]:
        parts.append(f"{counts[TrialStatus.ABANDONED.value]} abandoned")
    if snap.best is not None:
        name = study.spec.objectives[0].name
        parts.append(
            f"best {name} = {_fmt_outcome((snap.best.values or {})[name])} "
            f"(trial {snap.best.index})"
        )
    message = f'<div class="note">{escape(study.message)}</div>' if study.message else ""
    attributes = " ".join(f'{k}="{escape(str(v))}"' for k, v in attrs.items())
    return (
        f'<div id="summary" {attributes}><span class="badge {escape(status)}">'
        f'{escape(status)}</span> {escape(" · ".join(parts))}'
        f' <span class="note">updated {_when(datetime.now(UTC))}</span>{message}</div>'
    )


def _convergence(snap: Snapshot) -> list[str]:
    """Per objective: every observed value and the best so far, against the trial index."""
    charts = []
    for number, objective in enumerate(snap.study.spec.objectives):
        points = snap.best_so_far[objective.name]
        goal = "min" if objective.minimize else "max"
        charts.append(svg.line_chart(
            [
                svg.Series("observed", [(p.index, p.value) for p in points],
                           color="#9aa5b1", line=False),
                svg.Series("best so far", [(p.index, p.best) for p in points],
                           color=svg.PALETTE[number % len(svg.PALETTE)]),
            ],
            title=f"{objective.name} ({goal}): best so far",
            x_label="trial index", y_label=objective.name, integer_x=True,
            element_id=f"convergence-{number}",
        ))
    return charts


def _pareto(snap: Snapshot) -> str:
    """The first two objectives of every completed trial that has both; the Pareto front
    (scoring.pareto: feasible, non-dominated) drawn in colour and joined in a line."""
    spec = snap.study.spec
    a, b = spec.objectives[0].name, spec.objectives[1].name
    done = [t for t in snap.trials if t.status is TrialStatus.COMPLETED
            and scoring.mean(t, a) is not None and scoring.mean(t, b) is not None]
    on_front = {t.index for t in snap.front}
    return svg.scatter(
        [(scoring.mean(t, a) or 0.0, scoring.mean(t, b) or 0.0) for t in done],
        labels=[f"trial {t.index}{' (on the front)' if t.index in on_front else ''}: "
                f"{a}={_fmt_outcome((t.values or {})[a])}, "
                f"{b}={_fmt_outcome((t.values or {})[b])}" for t in done],
        front={i for i, t in enumerate(done) if t.index in on_front}, color="#9aa5b1",
        title=f"Pareto front: {b} vs {a} ({len(on_front)} of {len(done)} trials)",
        x_label=a, y_label=b, element_id="pareto", width=480, height=320,
    )


MAX_CURVES = 40  # the newest trials' curves: more would be a tangle


def _curves(snap: Snapshot) -> str:
    """The watched objective's curve of each trial against its steps; stopped trials grey."""
    metric = snap.study.spec.stopping_objective.name
    status = {t.index: t.status for t in snap.trials}
    series = [
        svg.Series(
            f"trial {index} ({status.get(index, TrialStatus.RUNNING).value.lower()})",
            [(step, mean(values[metric])) for step, values in curve],
            color=("#b0b7bf" if status.get(index) is TrialStatus.EARLY_STOPPED
                   else svg.PALETTE[index % len(svg.PALETTE)]),
            markers=False,
        )
        for index, curve in sorted(snap.curves.items())[-MAX_CURVES:]
    ]
    return svg.line_chart(series, title=f"{metric} by step, per trial", x_label="step",
                          y_label=metric, integer_x=True, element_id="learning-curves")


def _parameter_plots(snap: Snapshot) -> list[str]:
    """One objective: the objective against each parameter (the best trial ringed).
    Several: each parameter's value against the trial index."""
    spec = snap.study.spec
    single = len(spec.objectives) == 1
    charts = []
    for number, parameter in enumerate(spec.parameters):
        ticks = _choice_ticks(parameter)
        if single:
            objective = spec.objectives[0].name
            done = scoring.feasible_trials(spec, snap.trials)
            points = [(_position(parameter, t.params.get(parameter.name)),
                       scoring.mean(t, objective) or 0.0) for t in done]
            best = next((i for i, t in enumerate(done) if t is snap.best), None)
            name = parameter.name
            charts.append(svg.scatter(
                points,
                labels=[f"trial {t.index}: {name}={_fmt_value(t.params.get(name))}, "
                        f"{objective}={_fmt_outcome((t.values or {})[objective])}"
                        for t in done],
                highlight=best,
                title=f"{objective} vs {parameter.name}",
                x_label=parameter.name, y_label=objective,
                log_x=isinstance(parameter, Range) and parameter.log,
                x_ticks=ticks, color=svg.PALETTE[number % len(svg.PALETTE)],
                element_id=f"param-{parameter.name}",
            ))
        else:
            points = [(float(t.index), _position(parameter, t.params.get(parameter.name)))
                      for t in snap.trials]
            charts.append(svg.scatter(
                points,
                labels=[f"trial {t.index} ({t.status.value}): {parameter.name}="
                        f"{_fmt_value(t.params.get(parameter.name))}" for t in snap.trials],
                title=f"{parameter.name} by trial",
                x_label="trial index", y_label=parameter.name, y_ticks=ticks,
                log_y=isinstance(parameter, Range) and parameter.log,
                color=svg.PALETTE[number % len(svg.PALETTE)],
                element_id=f"param-{parameter.name}",
            ))
    return charts


def _choice_ticks(parameter: Range | Choice) -> list[tuple[float, str]] | None:
    if isinstance(parameter, Choice):
        return [(float(i), _fmt_value(v)) for i, v in enumerate(parameter.values)]
    return None


def _position(parameter: Range | Choice, value: Value | None) -> float:
    """Where a value goes on an axis: itself, or a choice's position among the values."""
    if value is None:
        return math.nan
    if isinstance(parameter, Choice):
        return float(parameter.values.index(value)) if value in parameter.values else math.nan
    return float(value)


def _table(snap: Snapshot) -> str:
    spec = snap.study.spec
    params = [p.name for p in spec.parameters]
    metrics = spec.metric_names
    # the evaluation task's columns, for a study whose trials have tasks (a closed loop)
    task_head = ['<th class="text">task</th><th class="text">description</th>'
                 '<th class="text">metadata</th><th class="text">created by</th>'
                 ] if snap.tasks else []
    head = "".join(
        ['<th>#</th><th class="text">status</th><th class="text">generator</th>']
        + task_head
        + [f"<th>{escape(n)}</th>" for n in params]
        + [f"<th>{escape(n)}</th>" for n in metrics]
        + ['<th>finished</th><th class="text">note</th>']
    )
    rows = []
    front = {t.index for t in snap.front}
    for trial in reversed(snap.trials):  # the newest first
        best = (snap.best is not None and trial.index == snap.best.index) or trial.index in front
        classes = f"{trial.status.value}{' best' if best else ''}"
        values = trial.values or {}
        cells = [
            f"<td>{trial.index}</td>",
            f'<td class="text">{escape(trial.status.value)}</td>',
            f'<td class="text">{escape(trial.generator)}</td>',
            *(_task_cells(snap.tasks.get(trial.task_id or "")) if snap.tasks else ()),
            *(f"<td>{escape(_fmt_value(trial.params.get(n)))}</td>" for n in params),
            *(f"<td>{escape(_fmt_outcome(values[n]) if n in values else '')}</td>"
              for n in metrics),
            f"<td>{_when(trial.finished_at) if trial.finished_at else ''}</td>",
            f'<td class="text">{escape(trial.error or "")}</td>',
        ]
        rows.append(
            f'<tr class="{classes}" data-index="{trial.index}" '
            f'data-status="{trial.status.value}">{"".join(cells)}</tr>'
        )
    body = "".join(rows) or (
        f'<tr class="empty"><td class="text" colspan="{5 + len(params) + len(metrics)}">'
        "no trials yet</td></tr>"
    )
    return f'<table id="trials"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _task_cells(info: TaskInfo | None) -> list[str]:
    if info is None:
        return ['<td class="text"></td>'] * 4
    metadata = ", ".join(f"{k}={_fmt_json(v)}" for k, v in sorted((info.metadata or {}).items()))
    return [
        f'<td class="text task" data-task-id="{escape(info.id)}" '
        f'data-state="{info.state.value}">{escape(info.name or info.id)}</td>',
        f'<td class="text">{escape(info.description or "")}</td>',
        f'<td class="text">{escape(metadata)}</td>',
        f'<td class="text">{escape(info.created_by or "")}</td>',
    ]


def _fmt_json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _fmt_value(value: Value | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_outcome(value: Outcome) -> str:
    if isinstance(value, tuple | list):
        return f"{value[0]:.4g} ± {value[1]:.2g}"
    return f"{value:.4g}"


def _when(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _js_string(text: str) -> str:
    """A JavaScript string literal that is safe inside a <script> element."""
    return json.dumps(text).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
