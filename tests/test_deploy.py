"""docker-compose.yml cannot be run here (no Docker engine); read it and check that each
service is what it says and that every command is a real entry point of this package."""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bo_queue.cli import API_APP, build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_and_redis_persistence(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "worker", "beat", "flower", "api"}
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--appendfsync") + 1] == "always"
    for name in ("worker", "beat", "flower"):
        env = services[name]["environment"]
        assert env["BO_QUEUE_REDIS_URL"].startswith("redis://redis:")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # scalable with --scale: a fixed container_name or host port would collide
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_worker_and_beat_commands_parse_with_our_cli(compose: dict[str, Any]) -> None:
    command = compose["services"]["worker"]["command"]
    assert command[0] == "bo-queue"
    args = build_parser().parse_args(command[1:])
    assert args.command == "worker"
    assert args.queues == "default,bo,evaluate"
    beat = compose["services"]["beat"]["command"]
    assert beat[0] == "bo-queue" and build_parser().parse_args(beat[1:]).command == "beat"


def test_flower_runs_our_command_with_basic_auth(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    command = flower["command"]
    assert command[0] == "bo-queue"
    assert build_parser().parse_args(command[1:]).command == "flower"
    env = flower["environment"]
    assert env["BO_QUEUE_NAMESPACE"] == compose["services"]["worker"]["environment"][
        "BO_QUEUE_NAMESPACE"
    ]  # the workers' namespace: the merged environment, not a copy that can drift
    assert env["BO_QUEUE_FLOWER_USER"].startswith("${BO_QUEUE_FLOWER_USER")
    assert env["BO_QUEUE_FLOWER_PASSWORD"].startswith("${BO_QUEUE_FLOWER_PASSWORD")
    assert flower["ports"] == ["5555:5555"]  # BO_QUEUE_FLOWER_PORT's default
    # `bo-queue flower` execs `celery -A workers.app flower`: the installed celery has it
    out = subprocess.run(
        [sys.executable, "-m", "celery", "flower", "--help"], capture_output=True, text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_console_script_is_declared() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'bo-queue = "bo_queue.cli:main"' in pyproject
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-c constraints.txt" in dockerfile
    for path in ("bo_queue", "workers", "scheduler"):
        assert f"COPY {path} " in dockerfile, shlex.quote(path)


def test_metrics_service_serves_prometheus_and_checks_health(compose: dict[str, Any]) -> None:
    metrics = compose["services"]["metrics"]
    command = metrics["command"]
    assert command[0] == "bo-queue"
    args = build_parser().parse_args(command[1:])
    assert args.command == "metrics" and args.port == 9808
    assert metrics["ports"] == ["9808:9808"]
    check = metrics["healthcheck"]["test"]
    assert check[:2] == ["CMD", "bo-queue"]
    assert build_parser().parse_args(check[2:]).command == "health"
    assert metrics["environment"]["BO_QUEUE_REDIS_URL"].startswith("redis://redis:")


def test_api_service_runs_our_api_command(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    command = api["command"]
    assert command[0] == "bo-queue"
    args = build_parser().parse_args(command[1:])
    assert args.command == "api" and args.port == 8000 and args.address == "0.0.0.0"
    assert api["ports"] == ["8000:8000"]
    env = api["environment"]  # the shared anchor: the workers' Redis and namespace
    assert env == compose["services"]["worker"]["environment"]
    assert env["BO_QUEUE_REDIS_URL"].startswith("redis://redis:")
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    probe = api["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "python"] and "127.0.0.1:8000/openapi.json" in probe[-1]
    # the factory `bo-queue api` hands uvicorn exists (uvicorn imports it the same way)
    module, name = API_APP.split(":")
    assert callable(getattr(importlib.import_module(module), name))
