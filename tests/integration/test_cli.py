"""The worker command line, plain `celery -A workers.app worker`, and a Redis that is down."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bo_queue import BOQueue, BrokerUnavailableError, ConfigurationError
from bo_queue.testing import WorkerProcess, free_port
from tests.conftest import HANDLERS, ROOT, new_namespace


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bo_queue.cli", *args], capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_worker_rejects_an_unknown_queue(redis_url: str) -> None:
    out = _cli("worker", "--queues", "default,nope", BO_QUEUE_REDIS_URL=redis_url)
    assert out.returncode == 2
    assert "unknown queue(s) nope" in out.stderr


def test_worker_rejects_an_unknown_setting(redis_url: str) -> None:
    out = _cli("worker", BO_QUEUE_REDIS_URL=redis_url, BO_QUEUE_CONCURENCY="2")
    assert out.returncode == 2
    assert "BO_QUEUE_CONCURENCY" in out.stderr


def test_worker_names_a_handler_module_it_cannot_import(redis_url: str) -> None:
    worker = WorkerProcess(redis_url, new_namespace(), imports=["no_such_module_here"])
    with pytest.raises(RuntimeError, match="cannot import handler module 'no_such_module_here'"):
        worker.start(wait=30)
    worker.stop()


def test_plain_celery_worker_runs_bo_queue_handlers(redis_url: str) -> None:
    namespace = new_namespace()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": redis_url,
           "BO_QUEUE_NAMESPACE": namespace, "BO_QUEUE_IMPORTS": HANDLERS}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-c", "1",
         "--loglevel", "WARNING"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with BOQueue(redis_url=redis_url, namespace=namespace) as bq:
            deadline = time.monotonic() + 60
            while "t.echo" not in bq.refresh_handlers():
                assert time.monotonic() < deadline, "the worker never published its handlers"
                time.sleep(0.1)
            assert bq.submit("t.echo", {"via": "celery"}).get(timeout=30) == {"via": "celery"}
    finally:
        process.terminate()
        process.wait(30)


def test_submit_to_a_redis_that_is_down_fails_fast() -> None:
    bq = BOQueue(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace=new_namespace(),
                 connect_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="unavailable"):
        bq.submit("t.echo", {})
    assert time.monotonic() - started < 10
    for call in (lambda: bq.info("some-id"), lambda: bq.cancel("some-id"),
                 lambda: bq.studies.get("some-study"), lambda: bq.studies.list()):
        with pytest.raises(BrokerUnavailableError):
            call()
    bq.close()


def test_bad_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        BOQueue(redis_url="redis://127.0.0.1:1/0", namespace="Bad Name!")
    with pytest.raises(ConfigurationError, match="redis://"):
        BOQueue(redis_url="http://example.invalid/0")
