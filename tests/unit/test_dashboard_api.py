"""The study dashboard routes (bo_queue.api.dashboard) on fakeredis, through TestClient:
studies and trials are written straight into the store, no workers and no Ax."""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from fastapi import FastAPI

from bo_queue import BOQueue
from bo_queue.api.dashboard import router
from bo_queue.api.deps import Namespaces, current_bq
from bo_queue.api.keys import ApiKeys
from bo_queue.config import Settings
from bo_queue.studies.models import (
    Choice,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    Study,
    StudyStatus,
    Trial,
    TrialStatus,
)

from .fakes import UNREACHABLE_URL

with warnings.catch_warnings():  # Starlette >= 1.x asks for httpx2 over httpx; either works
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from fastapi.testclient import TestClient

T0 = datetime(2025, 3, 1, tzinfo=UTC)
C = TrialStatus.COMPLETED


@pytest.fixture
def client(bq: BOQueue) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[current_bq] = lambda: bq
    with TestClient(app) as test_client:
        yield test_client


def make_study(bq: BOQueue, name: str = "tune", **kwargs: Any) -> Study:
    fields: dict[str, Any] = {
        "parameters": [Range("x", 0.0, 1.0), Range("lr", 1e-4, 1e-1, log=True),
                       Choice("c", ["a", "b"])],
        "objectives": [Objective("loss")],
        "strategy": Strategy(initial_trials=3, max_trials=6, seed=0),
    }
    fields.update(kwargs)
    return bq.studies.create(name, **fields)


def trial(index: int, status: TrialStatus = C, generator: str = "sobol", **values: Any) -> Trial:
    return Trial(
        index=index, params={"x": index / 10, "lr": 10 ** -(index % 4 + 1), "c": "ab"[index % 2]},
        status=status, values=values or None, generator=generator, created_at=T0,
        finished_at=T0 + timedelta(seconds=index) if status is not TrialStatus.RUNNING else None,
        error="it broke" if status is TrialStatus.FAILED else None,
    )


def put(bq: BOQueue, study: Study, trials: list[Trial], *path: StudyStatus) -> None:
    bq.studies.store.save_step(study, trials, None, 0)
    for to in path:
        current = bq.studies.get(study.id).status
        assert bq.studies.store.set_status(study.id, to, {current}) is to


def active_study(bq: BOQueue, **kwargs: Any) -> Study:
    """Six trials: four completed (loss 3, 1, 2, 0.5), one failed, one running."""
    study = make_study(bq, **kwargs)
    put(bq, study, [
        trial(0, loss=3.0), trial(1, loss=1.0), trial(2, TrialStatus.FAILED),
        trial(3, loss=2.0), trial(4, loss=[0.5, 0.1]), trial(5, TrialStatus.RUNNING),
    ], StudyStatus.INITIALIZING, StudyStatus.ACTIVE)
    return study


def svg_path_points(d: str) -> int:
    return len(re.findall(r"[ML]-?[\d.]+,-?[\d.]+", d))


def summary(html: str) -> dict[str, str]:
    match = re.search(r'<div id="summary" ([^>]*)>', html)
    assert match, html[:500]
    return dict(re.findall(r'(data-[a-z]+)="([^"]*)"', match.group(1)))


# -- data -------------------------------------------------------------------------------------


def test_data_has_status_counts_trials_and_best_so_far(client: TestClient, bq: BOQueue) -> None:
    study = active_study(bq)
    response = client.get(f"/studies/{study.id}/dashboard/data")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["study"]["id"] == study.id and data["study"]["name"] == "tune"
    assert data["study"]["status"] == "ACTIVE" and data["study"]["terminal"] is False
    assert data["study"]["max_trials"] == 6
    assert data["counts"] == {"total": 6, "COMPLETED": 4, "FAILED": 1, "RUNNING": 1,
                              "ABANDONED": 0, "EARLY_STOPPED": 0}
    assert [t["index"] for t in data["trials"]] == [0, 1, 2, 3, 4, 5]
    assert data["trials"][4]["values"] == {"loss": [0.5, 0.1]}
    assert data["best_so_far"] == {"loss": [
        {"index": 0, "value": 3.0, "best": 3.0},
        {"index": 1, "value": 1.0, "best": 1.0},
        {"index": 3, "value": 2.0, "best": 1.0},
        {"index": 4, "value": 0.5, "best": 0.5},
    ]}
    assert data["best"]["index"] == 4
    assert [o["name"] for o in data["objectives"]] == ["loss"]
    assert [p["name"] for p in data["parameters"]] == ["x", "lr", "c"]


def test_best_so_far_when_maximizing_and_with_outcome_constraints(
    client: TestClient, bq: BOQueue
) -> None:
    study = make_study(bq, objectives=[Objective("acc", minimize=False)],
                       outcome_constraints=[OutcomeConstraint(metric="cost", op="<=", bound=5)])
    put(bq, study, [trial(0, acc=0.5, cost=1), trial(1, acc=0.9, cost=9),  # infeasible
                    trial(2, acc=0.7, cost=2), trial(3, acc=0.6, cost=3)])
    data = client.get(f"/studies/{study.id}/dashboard/data").json()
    assert [(p["index"], p["best"]) for p in data["best_so_far"]["acc"]] == [
        (0, 0.5), (2, 0.7), (3, 0.7)]
    assert data["best"]["index"] == 2


def test_unknown_study_is_404(client: TestClient) -> None:
    for suffix in ("", "/fragment", "/data"):
        response = client.get(f"/studies/nope/dashboard{suffix}")
        assert response.status_code == 404, suffix
        assert "nope" in response.json()["detail"]


# -- fragment ---------------------------------------------------------------------------------


def test_fragment_shows_status_charts_and_table(client: TestClient, bq: BOQueue) -> None:
    study = active_study(bq)
    response = client.get(f"/studies/{study.id}/dashboard/fragment")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert summary(html) == {
        "data-status": "ACTIVE", "data-completed": "4", "data-failed": "1",
        "data-running": "1", "data-stopped": "0", "data-total": "6", "data-max": "6",
        "data-terminal": "false",
    }
    assert "best loss = 0.5 ± 0.1 (trial 4)" in html
    # one row per trial, the newest first, the best marked
    rows = re.findall(r'<tr class="([^"]*)" data-index="(\d+)" data-status="(\w+)">', html)
    assert [(int(i), s) for _, i, s in rows] == [
        (5, "RUNNING"), (4, "COMPLETED"), (3, "COMPLETED"), (2, "FAILED"), (1, "COMPLETED"),
        (0, "COMPLETED")]
    assert [c for c, i, _ in rows if "best" in c] == ["COMPLETED best"]
    assert "it broke" in html and "sobol" in html
    # the convergence chart: one point per completed trial on the best-so-far path
    convergence = re.search(r'<div id="convergence" class="charts">(.*?)</div>', html)
    assert convergence
    (chart,) = re.findall(r"<svg.*?</svg>", convergence.group(1))
    root = ET.fromstring(chart)
    paths = [p for p in root.iter("{http://www.w3.org/2000/svg}path")
             if p.get("data-series") == "best so far"]
    assert len(paths) == 1 and svg_path_points(paths[0].get("d", "")) == 4
    # objective vs each parameter, each a well-formed SVG
    parameters = re.search(r'<div id="parameters" class="charts">(.*?)</div>', html)
    assert parameters
    charts = re.findall(r"<svg.*?</svg>", parameters.group(1))
    assert [ET.fromstring(c).get("id") for c in charts] == ["param-x", "param-lr", "param-c"]
    assert all(len(re.findall("<circle", c)) == 4 for c in charts)
    assert ">0.0001<" in charts[1] and ">0.01<" in charts[1]  # lr on a log axis
    assert ">a<" in charts[2] and ">b<" in charts[2]  # the choice's values as ticks


def test_fragment_of_a_new_study_and_of_a_finished_one(client: TestClient, bq: BOQueue) -> None:
    study = make_study(bq)
    html = client.get(f"/studies/{study.id}/dashboard/fragment").text
    assert summary(html)["data-status"] == "CREATED"
    assert summary(html)["data-completed"] == "0"
    assert "no trials yet" in html and "no data yet" in html
    put(bq, study, [trial(i, loss=float(i)) for i in range(6)],
        StudyStatus.INITIALIZING, StudyStatus.ACTIVE, StudyStatus.COMPLETED)
    html = client.get(f"/studies/{study.id}/dashboard/fragment").text
    assert summary(html)["data-status"] == "COMPLETED"
    assert summary(html)["data-terminal"] == "true"
    assert summary(html)["data-completed"] == "6"


def test_learning_curves_one_line_per_trial_with_a_curve(
    client: TestClient, bq: BOQueue
) -> None:
    study = make_study(bq)
    stopped = trial(1, TrialStatus.EARLY_STOPPED, loss=0.8)
    put(bq, study, [trial(0, TrialStatus.RUNNING), trial(1, TrialStatus.RUNNING),
                    trial(2, TrialStatus.RUNNING)], StudyStatus.INITIALIZING, StudyStatus.ACTIVE)
    for index, losses in ((0, [0.9, 0.5, 0.3]), (1, [0.9, 0.8])):
        for step, loss in enumerate(losses):
            bq.studies.report_intermediate(study.id, index, step, {"loss": loss})
    put(bq, study, [stopped])  # as the step records the stop
    html = client.get(f"/studies/{study.id}/dashboard/fragment").text
    assert summary(html)["data-stopped"] == "1" and "1 early stopped" in html
    curves = re.search(r'<div id="curves" class="charts">(.*?)</div>', html)
    assert curves
    (chart,) = re.findall(r"<svg.*?</svg>", curves.group(1))
    root = ET.fromstring(chart)
    assert root.get("id") == "learning-curves"
    paths = {p.get("data-series"): svg_path_points(p.get("d", ""))
             for p in root.iter("{http://www.w3.org/2000/svg}path") if p.get("data-series")}
    assert paths == {"trial 0 (running)": 3, "trial 1 (early_stopped)": 2}
    data = client.get(f"/studies/{study.id}/dashboard/data").json()
    assert data["curves"] == {"0": [[0, {"loss": 0.9}], [1, {"loss": 0.5}], [2, {"loss": 0.3}]],
                              "1": [[0, {"loss": 0.9}], [1, {"loss": 0.8}]]}
    assert data["counts"]["EARLY_STOPPED"] == 1
    # a study without curves draws no such chart
    other = active_study(bq)
    assert 'id="curves"' not in client.get(f"/studies/{other.id}/dashboard/fragment").text


def test_several_objectives(client: TestClient, bq: BOQueue) -> None:
    study = make_study(bq, objectives=[Objective("loss"), Objective("speed", minimize=False)])
    put(bq, study, [trial(0, loss=2.0, speed=1.0), trial(1, loss=1.0, speed=0.5),
                    trial(2, TrialStatus.RUNNING)])
    html = client.get(f"/studies/{study.id}/dashboard/fragment").text
    for name in ("convergence-0", "convergence-1", "pareto", "param-x", "param-c"):
        assert f'id="{name}"' in html, name
    assert "loss (min): best so far" in html and "speed (max): best so far" in html
    assert "best loss" not in html  # no single best
    param_x = re.search(r'<svg[^>]*id="param-x".*?</svg>', html)
    assert param_x and param_x.group(0).count("<circle") == 3  # every trial, by index
    data = client.get(f"/studies/{study.id}/dashboard/data").json()
    assert data["best"] is None
    assert [p["best"] for p in data["best_so_far"]["speed"]] == [1.0, 1.0]
    assert [p["best"] for p in data["best_so_far"]["loss"]] == [2.0, 1.0]


def test_pareto_front_chart_highlights_the_non_dominated_trials(
    client: TestClient, bq: BOQueue
) -> None:
    study = make_study(bq, objectives=[Objective("loss"), Objective("speed", minimize=False)])
    # 1 dominates 0; 1, 2 and 3 trade off; 4 has no speed; 5 runs
    put(bq, study, [trial(0, loss=2.0, speed=0.5), trial(1, loss=1.0, speed=1.0),
                    trial(2, loss=0.5, speed=0.2), trial(3, loss=3.0, speed=2.0),
                    trial(4, loss=0.1), trial(5, TrialStatus.RUNNING)])
    html = client.get(f"/studies/{study.id}/dashboard/fragment").text
    chart = re.search(r'<svg[^>]*id="pareto".*?</svg>', html)
    assert chart
    root = ET.fromstring(chart.group(0))
    ns = "{http://www.w3.org/2000/svg}"
    circles = list(root.iter(f"{ns}circle"))
    assert len(circles) == 4  # the completed trials with both objectives
    front = [c.findtext(f"{ns}title") for c in circles if c.get("class") == "point front"]
    assert [t.split(" ")[1] for t in front] == ["1", "2", "3"]  # type: ignore[union-attr]
    [line] = [p for p in root.iter(f"{ns}path") if p.get("class") == "front"]
    assert svg_path_points(line.get("d", "")) == 3
    data = client.get(f"/studies/{study.id}/dashboard/data").json()
    assert data["pareto"] == [1, 2, 3]
    rows = re.findall(r'<tr class="([^"]*)" data-index="(\d+)"', html)
    assert sorted(int(i) for c, i in rows if "best" in c) == [1, 2, 3]


def test_a_single_objective_study_has_no_pareto_chart(client: TestClient, bq: BOQueue) -> None:
    study = active_study(bq)
    html = client.get(f"/studies/{study.id}/dashboard/fragment").text
    assert 'id="pareto"' not in html
    assert client.get(f"/studies/{study.id}/dashboard/data").json()["pareto"] == []


def test_index_lists_the_studies_with_status_and_best(client: TestClient, bq: BOQueue) -> None:
    assert 'class="empty"' in client.get("/dashboard").text
    one = active_study(bq)
    two = make_study(bq, "two <goals>",
                     objectives=[Objective("loss"), Objective("speed", minimize=False)])
    put(bq, two, [trial(0, loss=2.0, speed=0.5), trial(1, loss=1.0, speed=1.0)])
    response = client.get("/dashboard", params={"key": "k/1"})
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    html = response.text
    rows = re.findall(r'<tr data-study-id="([^"]+)" data-status="([A-Z]+)">(.*?)</tr>', html)
    assert [(i, s) for i, s, _ in rows] == [(two.id, "CREATED"), (one.id, "ACTIVE")]  # newest first
    assert 'data-value="0.5"' in rows[1][2]  # the best feasible loss, (0.5, sem) as its mean
    assert "1 on the front" in rows[0][2] and "two &lt;goals&gt;" in rows[0][2]
    assert f'href="/studies/{one.id}/dashboard?key=k%2F1"' in rows[1][2]


# -- page -------------------------------------------------------------------------------------


def test_page_links_carry_the_key_and_polls_the_fragment(client: TestClient, bq: BOQueue) -> None:
    study = active_study(bq)
    response = client.get(f"/studies/{study.id}/dashboard", params={"key": "boq_a/b+c"})
    assert response.status_code == 200
    html = response.text
    assert html.startswith("<!DOCTYPE html>")
    assert '<h1 id="study-name">tune</h1>' in html
    assert f'href="/studies/{study.id}/dashboard/data?key=boq_a%2Fb%2Bc"' in html
    assert f'"/studies/{study.id}/dashboard/fragment?key=boq_a%2Fb%2Bc"' in html  # in the JS
    assert '<div id="live"><div id="summary"' in html
    assert "setTimeout(tick" in html
    # self-contained: no external scripts, styles or images
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_page_escapes_the_study_name_and_values(client: TestClient, bq: BOQueue) -> None:
    evil = "<script>alert(1)</script>"
    study = make_study(bq, name=evil, parameters=[Choice("c", ["<b>", "&"])])
    put(bq, study, [Trial(index=0, params={"c": "<b>"}, values={"loss": 1.0}, status=C,
                          generator="<gen>", created_at=T0)])
    html = client.get(f"/studies/{study.id}/dashboard").text
    assert evil not in html and "<b>" not in html and "<gen>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # ours


def test_page_and_data_show_the_studys_description_and_metadata(
    client: TestClient, bq: BOQueue
) -> None:
    study = active_study(bq, description="booster <v2>", metadata={"lab": "B", "runs": [1, 2]})
    html = client.get(f"/studies/{study.id}/dashboard").text
    assert '<span id="study-description">booster &lt;v2&gt;</span>' in html
    metadata = re.search(r'<span id="study-metadata">(.*?)</span></div>', html)
    assert metadata and re.findall(r'data-key="([^"]+)"', metadata.group(1)) == ["lab", "runs"]
    data = client.get(f"/studies/{study.id}/dashboard/data").json()["study"]
    assert (data["description"], data["metadata"]) == ("booster <v2>", {"lab": "B", "runs": [1, 2]})
    plain = make_study(bq, name="plain")
    assert 'id="study-description"' not in client.get(f"/studies/{plain.id}/dashboard").text


# -- with the real key check ------------------------------------------------------------------


def test_the_routes_need_an_api_key(bq: BOQueue, server: fakeredis.FakeServer) -> None:
    namespaces = Namespaces(Settings.load(redis_url=UNREACHABLE_URL, namespace="unit"))
    namespaces.keys = ApiKeys(fakeredis.FakeRedis(server=server, decode_responses=True))
    namespaces._queues["unit"] = bq  # the namespace's BOQueue: the one on fakeredis
    key = namespaces.keys.create("unit")
    app = FastAPI()
    app.include_router(router)
    app.state.namespaces = namespaces
    study = active_study(bq)
    base = f"/studies/{study.id}/dashboard"
    with TestClient(app) as test_client:
        for suffix in ("", "/fragment", "/data"):
            assert test_client.get(base + suffix).status_code == 401
            assert test_client.get(base + suffix, params={"key": "boq_wrong"}).status_code == 401
            assert test_client.get(base + suffix, params={"key": key}).status_code == 200
            assert test_client.get(base + suffix, headers={"X-API-Key": key}).status_code == 200
        page = test_client.get(base, headers={"Authorization": f"Bearer {key}"}).text
        assert f"fragment?key={key}" in page  # so the browser's fetches pass too
    namespaces._queues.clear()  # the bq fixture closes its own
    namespaces.close()
