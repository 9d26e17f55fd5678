"""`bo-queue flower`: Flower on the workers' broker and namespace, behind basic auth, seeing
tasks by their handler names. A real worker, a real Flower process, its HTTP API."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bo_queue import TaskRequest
from bo_queue.cli import main
from bo_queue.testing import free_port, wait_until
from tests.conftest import ROOT, Cluster, make_cluster

USER, PASSWORD = "ops", "s3cret:with-colon"


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class Flower:
    """`bo-queue flower` in its own process group, its output in a log file."""

    def __init__(self, cluster: Cluster, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BO_QUEUE_", "FLOWER_"))}
        env.update(
            PYTHONPATH=str(ROOT), BO_QUEUE_REDIS_URL=cluster.redis_url,
            BO_QUEUE_NAMESPACE=cluster.namespace, BO_QUEUE_FLOWER_USER=USER,
            BO_QUEUE_FLOWER_PASSWORD=PASSWORD,
        )
        fd, self.log_path = tempfile.mkstemp(prefix="bo-queue-flower-", suffix=".log")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bo_queue.cli", "flower", "--port", str(port),
             "--address", "127.0.0.1"],
            env=env, stdout=fd, stderr=subprocess.STDOUT, start_new_session=True,
        )
        os.close(fd)

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def api(self, path: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> Any:
        status, body = _get(self.url + path, auth)
        assert status == 200, f"{path}: HTTP {status} {body[:200]!r}\n{self.log()[-2000:]}"
        return json.loads(body)

    def wait_up(self, timeout: float = 60) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower exited:\n{self.log()[-3000:]}")
            return _get(self.url + "/healthcheck") == (200, b"OK")

        wait_until(up, timeout, 0.2, what="flower to answer")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        os.unlink(self.log_path)


@pytest.fixture
def one_worker(redis_url: str) -> Iterator[Cluster]:
    cluster = make_cluster(redis_url, workers=1, concurrency=1)
    yield cluster
    cluster.close()


def test_flower_sees_workers_and_tasks_by_handler_name(one_worker: Cluster) -> None:
    hostname = one_worker.workers[0].hostname
    flower = Flower(one_worker, free_port())
    try:
        flower.wait_up()
        # basic auth guards the API: no credentials, or wrong ones, get 401
        assert _get(flower.url + "/api/workers")[0] == 401
        assert _get(flower.url + "/api/workers", (USER, "wrong"))[0] == 401
        assert _get(flower.url + "/api/tasks")[0] == 401
        # the worker answers Flower's inspect (remote control, under the namespace) ...
        wait_until(lambda: hostname in flower.api("/api/workers?refresh=true"), 30,
                   0.5, what="flower to list the worker")
        # ... and its events reach Flower: wait for a heartbeat, so no task event is missed
        wait_until(lambda: flower.api("/api/workers?status=true").get(hostname) is True, 30,
                   0.5, what="flower to receive the worker's events")

        bq = one_worker.producer()
        handles = [bq.submit("t.echo", {"n": n}) for n in range(3)]
        assert [h.get(timeout=30) for h in handles] == [{"n": n} for n in range(3)]
        # a task's name, description, metadata and created_by: Flower's kwargs column
        [named] = bq.submit_many([TaskRequest(
            handler="t.echo", payload={"n": 9}, name="sweep · 1", description="lr sweep",
            metadata={"experiment": "e7"})], created_by="lab-7")
        assert named.get(timeout=30) == {"n": 9}
        retried = bq.submit("t.flaky", {"fail_times": 1}, name="second try")  # Celery's retry
        assert retried.get(timeout=30) == {"attempt": 2}

        ids = {h.id for h in handles} | {named.id}

        def all_succeeded() -> bool:
            tasks = flower.api("/api/tasks?taskname=t.echo")
            return ids <= {i for i, t in tasks.items() if t["state"] == "SUCCESS"}

        wait_until(all_succeeded, 30, 0.3, what="flower to show the three tasks succeeded")
        tasks = flower.api("/api/tasks")
        for task_id in ids:
            assert tasks[task_id]["name"] == "t.echo"  # the handler name, not a wrapper
            assert tasks[task_id]["state"] == "SUCCESS"
            assert tasks[task_id]["worker"] == hostname
        info = flower.api(f"/api/task/info/{handles[0].id}")
        assert info["name"] == "t.echo" and info["state"] == "SUCCESS"
        assert info["kwargs"] == "{}" and info["args"] == "[{'n': 0}]"
        shown = flower.api(f"/api/task/info/{named.id}")
        assert shown["name"] == "t.echo"  # still the handler: Flower groups by it
        assert shown["kwargs"] == ("{'name': 'sweep · 1', 'description': 'lr sweep', "
                                   "'metadata': {'experiment': 'e7'}, 'created_by': 'lab-7'}")
        assert flower.api("/api/tasks?taskname=t.echo")[named.id]["kwargs"] == shown["kwargs"]
        wait_until(lambda: flower.api(f"/api/task/info/{retried.id}")["state"] == "SUCCESS",
                   30, 0.3, what="flower to show the retried task succeeded")
        again = flower.api(f"/api/task/info/{retried.id}")
        assert again["kwargs"] == "{'name': 'second try'}" and again["retries"] == 1
    finally:
        flower.stop()


class _Exec(Exception):
    """Raised by the stand-in for os.execvpe: what `bo-queue flower` would have run."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(argv)
        self.argv, self.env = argv, env


def _run_flower_command(
    monkeypatch: pytest.MonkeyPatch, *args: str, **env: str
) -> tuple[_Exec | None, int | None]:
    for name in list(os.environ):
        if name.startswith(("BO_QUEUE_FLOWER_", "FLOWER_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def execvpe(file: str, argv: list[str], environ: dict[str, str]) -> None:
        raise _Exec(argv, environ)

    monkeypatch.setattr(os, "execvpe", execvpe)
    try:
        return None, main(["flower", *args])
    except _Exec as exc:
        return exc, None


def test_flower_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran, _ = _run_flower_command(
        monkeypatch, BO_QUEUE_FLOWER_USER="u", BO_QUEUE_FLOWER_PASSWORD="p w",
        BO_QUEUE_FLOWER_PORT="6000",
    )
    assert ran is not None
    assert ran.argv[1:] == ["-m", "celery", "-A", "workers.app", "flower", "--port=6000",
                            "--address=0.0.0.0"]
    assert ran.env["FLOWER_BASIC_AUTH"] == "u:p w"  # in the environment, not in `ps`
    assert "p w" not in " ".join(ran.argv)
    assert "without authentication" not in capsys.readouterr().err

    ran, _ = _run_flower_command(monkeypatch, "--port", "7000", "--address", "127.0.0.1",
                                 BO_QUEUE_FLOWER_ADDRESS="10.0.0.1")
    assert ran is not None
    assert ran.argv[-2:] == ["--port=7000", "--address=127.0.0.1"]  # flags win
    assert "FLOWER_BASIC_AUTH" not in ran.env
    assert "Flower runs without authentication" in capsys.readouterr().err


def test_flower_needs_both_user_and_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran, code = _run_flower_command(monkeypatch, BO_QUEUE_FLOWER_USER="u")
    assert ran is None and code == 2
    err = capsys.readouterr().err
    assert "BO_QUEUE_FLOWER_USER and BO_QUEUE_FLOWER_PASSWORD" in err
