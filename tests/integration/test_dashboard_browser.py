"""The study dashboard in a real browser: a closed-loop study on real workers, the dashboard
routes served by uvicorn, and headless Chromium (over the DevTools protocol) watching the
page update itself until the study completes."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import redis

from bo_queue import Objective, Range, Strategy
from bo_queue.api.keys import ApiKeys
from tests.conftest import HANDLERS, ROOT, Cluster, make_cluster, new_namespace

from .cdp import Chromium, DevTools, DevToolsError, free_port, stop_group


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    """No skip: a missing browser is a failure, with the way to fix it."""
    assert shutil.which("chromium"), "chromium is not on PATH: `make test` installs it (apt)"

TRIALS = 8
T = TypeVar("T")


@contextmanager
def dashboard_server(redis_url: str, log_path: Path) -> Iterator[str]:
    """uvicorn serving tests.integration.dashboard_app in a process group of its own;
    yields its base URL once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BO_QUEUE_")}
    env.update({"BO_QUEUE_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.integration.dashboard_app:create",
             "--factory", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/docs", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    output = log_path.read_text()
                    raise AssertionError(f"uvicorn did not start:\n{output}") from None
                time.sleep(0.2)
        yield base
    finally:
        stop_group(process)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


SUMMARY_JS = """(() => {
  const s = document.getElementById("summary");
  return s === null ? null : {status: s.dataset.status, completed: Number(s.dataset.completed)};
})()"""
FETCHES_JS = """performance.getEntriesByType("resource")
  .filter(e => e.name.includes("/dashboard/fragment")).length"""


@pytest.mark.timeout(300)
def test_dashboard_updates_live_in_headless_chromium(redis_url: str, tmp_path: Path) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=2,
                           queues=("default", "bo", "evaluate"))
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        bq = cluster.producer()
        key = ApiKeys(admin).create(cluster.namespace, "dashboard browser test")
        study = bq.studies.create(
            name="dashboard <live> & well",
            parameters=[Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)],
            objectives=[Objective("loss")],
            evaluator="t.quadratic",
            evaluator_options={"sleep_s": 0.4},
            strategy=Strategy(initial_trials=TRIALS, max_trials=TRIALS, seed=0),  # Sobol only
        )
        with dashboard_server(redis_url, tmp_path / "uvicorn.log") as base, \
                Chromium(tmp_path / "chromium-profile") as chromium:
            tab = chromium.page()
            tab.call("Page.enable")
            tab.call("Emulation.setDeviceMetricsOverride", width=1280, height=1500,
                     deviceScaleFactor=1, mobile=False)
            url = f"{base}/studies/{study.id}/dashboard?key={quote(key, safe='')}"
            tab.call("Page.navigate", url=url)
            first = wait_for(lambda: loaded(tab), 30, "the page to load")
            assert first == {"status": "CREATED", "completed": 0}
            assert tab.evaluate("document.title").startswith("dashboard <live> & well")
            # a reload would drop these: they prove every later reading is the same page load
            tab.evaluate("performance.setResourceTimingBufferSize(100000); "
                         "window.__sameLoad = 'yes'; true")

            bq.studies.run(study.id)
            samples = watch_until_terminal(tab, timeout=180)

            final = samples[-1]
            assert final == {"status": "COMPLETED", "completed": TRIALS}, samples
            assert tab.evaluate("window.__sameLoad") == "yes"  # never reloaded
            counts = [s["completed"] for s in samples]
            assert counts == sorted(counts), samples  # never went back
            # two moments while the study ran (ACTIVE), the later showing more trials
            running = [s["completed"] for s in samples if s["status"] == "ACTIVE"]
            assert len(running) >= 2 and running[-1] > running[0], samples
            check_final_page(tab, bq.studies.trials(study.id))
            assert bq.studies.get(study.id).completed_trials == TRIALS

            # polling stopped once the page showed COMPLETED
            fetches = tab.evaluate(FETCHES_JS)
            assert fetches >= 2  # it did poll
            time.sleep(2.5)
            assert tab.evaluate(FETCHES_JS) == fetches
            assert tab.evaluate('document.getElementById("poll-note").textContent') == "final"

            shot = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            png = base64.b64decode(shot["data"])
            path = tmp_path / "dashboard.png"
            path.write_bytes(png)
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
            # the 1280 px viewport, less a scrollbar when the page is taller than it (the
            # page's clientWidth may not count that scrollbar: 1280 beside a 1265 shot)
            assert 1250 <= width <= 1280 and height >= 600, (width, height)
            assert path.stat().st_size > 20_000  # a rendered page, not a blank one
    finally:
        admin.close()
        cluster.close()


def loaded(tab: DevTools) -> dict[str, Any] | None:
    try:
        summary: dict[str, Any] | None = tab.evaluate(SUMMARY_JS)
        return summary
    except DevToolsError:  # the old document went away under the call
        return None


def watch_until_terminal(tab: DevTools, timeout: float) -> list[dict[str, Any]]:
    """What the page's status line says, every 0.2 s, until it shows COMPLETED or FAILED."""
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not samples or samples[-1]["status"] not in ("COMPLETED", "FAILED"):
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed the study end: {samples[-5:]}")
        sample = tab.evaluate(SUMMARY_JS)
        if sample is not None and (not samples or sample != samples[-1]):
            samples.append(sample)
        time.sleep(0.2)
    return samples


def check_final_page(tab: DevTools, trials: list[Any]) -> None:
    rows = tab.evaluate("""Array.from(document.querySelectorAll("#trials tbody tr[data-index]"))
        .map(r => [Number(r.dataset.index), r.dataset.status])""")
    assert sorted(rows) == sorted([t.index, t.status.value] for t in trials)
    assert len(rows) == TRIALS
    d = tab.evaluate("""document.querySelector(
        '#convergence path.series[data-series="best so far"]').getAttribute("d")""")
    points = re.findall(r"[ML]-?[\d.]+,-?[\d.]+", d)
    assert len(points) == TRIALS, d
    circles = tab.evaluate('document.querySelectorAll("#parameters svg circle").length')
    assert circles == 2 * TRIALS  # loss against x and against y
    # the charts were laid out, not just present in the markup
    box = tab.evaluate("""(() => { const r = document.getElementById("convergence-0")
        .getBoundingClientRect(); return [r.width, r.height]; })()""")
    assert box[0] > 300 and box[1] > 150, box


def settled(tab: DevTools, script: str) -> Any:
    """The script's value on the page, None while navigation replaces the document."""
    try:
        return tab.evaluate(script) or None
    except DevToolsError:  # the old document went away under the call
        return None


def screenshot(tab: DevTools, path: Path) -> None:
    shot = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = base64.b64decode(shot["data"])
    path.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000, path


PARETO_JS = """(() => {
  const svg = document.getElementById("pareto");
  if (svg === null) { return null; }
  const front = Array.from(svg.querySelectorAll("circle.front"))
    .map(c => Number(c.querySelector("title").textContent.split(" ")[1].replace(":", "")));
  const r = svg.getBoundingClientRect();
  return {circles: svg.querySelectorAll("circle").length, front: front.sort((a, b) => a - b),
          line: svg.querySelector("path.front").getAttribute("data-points"),
          box: [r.width, r.height]};
})()"""
INDEX_JS = """Array.from(document.querySelectorAll("#studies tbody tr[data-study-id]")).map(r =>
  [r.dataset.studyId, r.dataset.status, r.querySelector("td.best").textContent,
   r.querySelector("a").getAttribute("href")])"""


@pytest.mark.timeout(300)
def test_pareto_front_and_index_in_headless_chromium(redis_url: str, tmp_path: Path) -> None:
    from workers.objectives import ZDT1_SPACE

    cluster = Cluster(redis_url, new_namespace(), {}, queues=("default", "bo", "evaluate"))
    cluster.start_workers({"concurrency": 2,
                           "imports": (HANDLERS, "tests.integration.moo_problems")})
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        bq = cluster.producer()
        key = ApiKeys(admin).create(cluster.namespace, "pareto browser test")
        query = f"?key={quote(key, safe='')}"
        two = bq.studies.create(
            "zdt1", [Range(n, lo, hi) for n, (lo, hi) in ZDT1_SPACE.items()],
            [Objective("f0"), Objective("f1")], evaluator="bench.zdt1",
            strategy=Strategy(initial_trials=TRIALS, max_trials=TRIALS, seed=0),  # Sobol only
        )
        one = bq.studies.create(
            "quadratic", [Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)], [Objective("loss")],
            evaluator="t.quadratic", strategy=Strategy(initial_trials=4, max_trials=4, seed=0),
        )
        for study in (two, one):
            bq.studies.run(study.id)
        for study in (two, one):
            assert bq.studies.wait(study.id, timeout=120).status.value == "COMPLETED"
        front = sorted(t.index for t in bq.studies.pareto(two.id))
        best = bq.studies.best(one.id)
        assert front and best is not None

        with dashboard_server(redis_url, tmp_path / "uvicorn.log") as base, \
                Chromium(tmp_path / "chromium-profile") as chromium:
            tab = chromium.page()
            tab.call("Page.enable")
            tab.call("Emulation.setDeviceMetricsOverride", width=1280, height=1200,
                     deviceScaleFactor=1, mobile=False)
            tab.call("Page.navigate", url=f"{base}/studies/{two.id}/dashboard{query}")
            chart = wait_for(lambda: settled(tab, PARETO_JS), 30, "the Pareto chart")
            assert chart["circles"] == TRIALS and chart["front"] == front, chart
            assert chart["line"] == str(len(front))
            assert chart["box"][0] > 400 and chart["box"][1] > 250, chart  # laid out
            screenshot(tab, tmp_path / "pareto.png")

            tab.call("Page.navigate", url=f"{base}/dashboard{query}")
            rows = wait_for(lambda: settled(tab, INDEX_JS), 30, "the index")
            assert [(r[0], r[1]) for r in rows] == [(one.id, "COMPLETED"), (two.id, "COMPLETED")]
            assert rows[0][2] == f"loss = {float(best.values['loss']):.4g}"  # type: ignore[index,arg-type]
            assert rows[1][2] == f"{len(front)} on the front"
            assert rows[1][3] == f"/studies/{two.id}/dashboard{query}"
            screenshot(tab, tmp_path / "index.png")
    finally:
        admin.close()
        cluster.close()
