"""`bo-queue api` as a real subprocess for the API tests: its own process group, its output
in a log file, killed whole when the test module is done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

from bo_queue.api.keys import ApiKeys
from bo_queue.testing import ProcessHandle, _Process, free_port
from tests.conftest import ROOT


class ApiServer:
    def __init__(self, redis_url: str, namespace: str, **env: str) -> None:
        self.namespace = namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, self.log_path = tempfile.mkstemp(prefix="bo-queue-api-", suffix=".log")
        os.close(fd)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BO_QUEUE_")}
        environ.update({"PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": redis_url,
                        "BO_QUEUE_NAMESPACE": namespace, **env})
        with open(self.log_path, "ab") as log:  # forked as the workers are (conftest)
            self.process: ProcessHandle = _Process.launch(
                [sys.executable, "-m", "bo_queue.cli", "api", "--port", str(self.port),
                 "--address", "127.0.0.1", "--log-level", "warning"], environ, log)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + "/openapi.json", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not answer within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        Path(self.log_path).unlink(missing_ok=True)


@contextmanager
def running_api(redis_url: str, namespace: str, **env: str) -> Iterator[ApiServer]:
    """A `bo-queue api` for the namespace (`env`: more settings of its own), answering;
    stopped at the end."""
    server = ApiServer(redis_url, namespace, **env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextmanager
def api_client(redis_url: str, namespace: str, key_name: str,
               timeout: float = 30) -> Iterator[httpx.Client]:
    """A `bo-queue api` of its own for the namespace, and a client holding a new API key
    (named `key_name`) of it; both stopped at the end."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with running_api(redis_url, namespace) as server:
            key = ApiKeys(client).create(namespace, name=key_name)
            with httpx.Client(base_url=server.url, headers={"X-API-Key": key},
                              timeout=timeout) as session:
                yield session
    finally:
        client.close()
