"""docker-compose.yml cannot be run here (no Docker engine); read it and check that each
service is what it says, that every command is a real entry point of this package, and
that the image installs what each command needs (the extras, read off the Dockerfile)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bo_queue.cli import API_APP, build_parser
from bo_queue.config import Settings

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


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
COMPOSE_FILES = sorted(ROOT.glob("docker-compose*.yml"))


def names(specs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def image_extras(dockerfile: str) -> set[str]:
    """The extras of this package the Dockerfile's `pip install` names ('.' or '.[a,b]')."""
    for line in dockerfile.splitlines():
        if line.startswith("RUN ") and "pip install" in line:
            for word in shlex.split(line):
                match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", word)
                if match:
                    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}
    pytest.fail("the Dockerfile does not pip-install this package")


def closure(dists: set[str]) -> set[str]:
    """`dists` and everything they require (as installed here), without their extras."""
    seen: set[str] = set()
    todo = list(dists)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def imported_distributions(package: Path) -> set[str]:
    """The third-party distributions the modules under `package` import."""
    modules: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    owners = importlib.metadata.packages_distributions()
    return {canonicalize_name(dist) for module in modules - set(sys.stdlib_module_names)
            for dist in owners.get(module, []) if canonicalize_name(dist) != "bo-queue"}


def needs(command: list[str]) -> set[str]:
    """The distributions a service's command needs beyond what every command imports: a
    worker that serves `bo` runs study steps (Ax); the API serves FastAPI on uvicorn."""
    if command[:1] != ["bo-queue"]:
        return set()
    args = build_parser().parse_args(command[1:])
    if args.command == "worker":
        queues = (args.queues or ",".join(Settings.model_fields["queues"].default)).split(",")
        return {"ax-platform"} if "bo" in queues else set()
    if args.command == "api":
        return imported_distributions(ROOT / "bo_queue" / "api") | {"uvicorn"}
    return set()


def missing(dockerfile: str) -> dict[str, set[str]]:
    """By compose file and service: what its command needs that the image leaves out."""
    extras = image_extras(dockerfile)
    optional = PROJECT["optional-dependencies"]
    assert extras <= set(optional), f"unknown extras {extras - set(optional)}"
    installed = closure(names(PROJECT["dependencies"]).union(
        *(names(optional[extra]) for extra in extras)))
    gaps: dict[str, set[str]] = {}
    for path in COMPOSE_FILES:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            lacking = needs(service.get("command") or []) - installed
            if lacking:
                gaps[f"{path.name}:{name}"] = lacking
    return gaps


def test_the_image_installs_what_every_service_command_needs() -> None:
    assert COMPOSE_FILES
    assert missing((ROOT / "Dockerfile").read_text()) == {}
    assert "bo" in image_extras((ROOT / "Dockerfile").read_text())


def test_the_check_finds_a_service_whose_extra_the_image_lacks() -> None:
    # the Dockerfile as it was: the worker serves `bo` without Ax; the API needs no extra
    before = "RUN pip install --no-cache-dir -c constraints.txt ."
    assert missing(before) == {"docker-compose.yml:worker": {"ax-platform"}}
    assert needs(["bo-queue", "api"]) >= {"fastapi", "uvicorn"}
    assert needs(["bo-queue", "worker", "--queues", "default,evaluate"]) == set()
