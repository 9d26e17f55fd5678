"""docker-compose.yml and docker-compose.ha.yml cannot be run here (no Docker engine);
read them and check that each service is what it says, that every command is a real entry
point of this package, that the image installs what each command needs (the extras, read
off the Dockerfile), and that the HA file's Redis nodes, sentinels and services agree."""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    assert missing(before) == {"docker-compose.yml:worker": {"ax-platform"},
                               "docker-compose.ha.yml:worker-bo": {"ax-platform"}}
    assert needs(["bo-queue", "api"]) >= {"fastapi", "uvicorn"}
    assert needs(["bo-queue", "worker", "--queues", "default,evaluate"]) == set()


# -- docker-compose.ha.yml: Redis with Sentinel ---------------------------------------------

HA_FILE = "docker-compose.ha.yml"


@pytest.fixture(scope="module")
def ha() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / HA_FILE).read_text())
    return data


def role(service: dict[str, Any]) -> str:
    """master, replica, sentinel, bo-queue, or other: read off the service's command."""
    command = service.get("command") or []
    if command[:1] == ["bo-queue"]:
        return "bo-queue"
    if command[:1] == ["redis-server"]:
        return "replica" if "--replicaof" in command else "master"
    if command[:2] == ["sh", "-c"] and "--sentinel" in command[-1]:
        return "sentinel"
    return "other"


def sentinel_conf(service: dict[str, Any]) -> list[list[str]]:
    """The lines of the sentinel.conf a sentinel service writes (its heredoc), split."""
    match = re.search(r"<<EOF\n(.*?)\nEOF\n", service["command"][-1], re.S)
    assert match, "a sentinel service writes its sentinel.conf in a <<EOF heredoc"
    return [line.split() for line in match.group(1).splitlines() if line.strip()]


def sentinel_nodes(url: str) -> tuple[set[tuple[str, int]], str]:
    """`sentinel://h1:26379;sentinel://h2:26379/0` -> ({(h1, 26379), (h2, 26379)}, '0')."""
    nodes, db = set(), ""
    for part in url.split(";"):
        parsed = urlsplit(part)
        if parsed.scheme != "sentinel" or not parsed.hostname or not parsed.port:
            raise ValueError(f"not a sentinel://host:port node: {part!r}")
        nodes.add((parsed.hostname, parsed.port))
        db = parsed.path.strip("/") or db
    return nodes, db


def option(command: list[str], flag: str, count: int = 1) -> list[str]:
    """The `count` words after `flag` in a command ([] without it)."""
    return command[command.index(flag) + 1:][:count] if flag in command else []


def redis_problems(services: dict[str, Any], master: str, replicas: list[str]) -> list[str]:
    """Every node keeps an AOF with appendfsync always; every replica replicates the master."""
    problems = []
    for name in [master, *replicas]:
        command = services[name]["command"]
        if option(command, "--appendonly") != ["yes"] or option(
                command, "--appendfsync") != ["always"]:
            problems.append(f"{name}: AOF with appendfsync always expected")
        if name in replicas and option(command, "--replicaof", 2) != [master, "6379"]:
            problems.append(f"{name} does not replicate {master} 6379")
    return problems


def sentinel_problems(
    services: dict[str, Any], master: str, sentinels: list[str],
) -> tuple[list[str], str, set[tuple[str, int]]]:
    """The sentinels' own problems, the master name they monitor, and their (name, port)s:
    an odd number, at least 3; host names on; one and the same monitor line each, on the
    master, with a majority quorum."""
    problems, monitors, nodes = [], set(), set()
    if len(sentinels) < 3 or len(sentinels) % 2 == 0:
        problems.append(f"an odd number of sentinels, at least 3, expected: {sentinels}")
    for name in sentinels:
        conf = sentinel_conf(services[name])
        keys = [" ".join(line[:2]) for line in conf]
        for setting in ("resolve-hostnames", "announce-hostnames"):
            if ["sentinel", setting, "yes"] not in conf:
                problems.append(f"{name}: `sentinel {setting} yes` missing (Docker DNS names)")
        monitor = [tuple(line[2:]) for line in conf if line[:2] == ["sentinel", "monitor"]]
        if len(monitor) != 1:
            problems.append(f"{name}: one `sentinel monitor` line expected, found {monitor}")
            continue
        resolve = "sentinel resolve-hostnames"
        if resolve in keys and keys.index("sentinel monitor") < keys.index(resolve):
            problems.append(f"{name}: resolve-hostnames must come before the monitor line")
        monitors.add(monitor[0])
        nodes.add((name, int(next((line[1] for line in conf if line[0] == "port"), 26379))))
    if len(monitors) != 1:
        return [*problems, f"the sentinels monitor different masters: {monitors}"], "", nodes
    master_name, host, port, quorum = next(iter(monitors))
    if (host, port) != (master, "6379"):
        problems.append(f"the sentinels monitor {host}:{port}, not {master}:6379")
    if not len(sentinels) // 2 < int(quorum) <= len(sentinels):
        problems.append(f"quorum {quorum} of {len(sentinels)} sentinels is not a majority")
    return problems, master_name, nodes


def ha_problems(compose: dict[str, Any]) -> list[str]:
    """What does not fit together: the replicas and the sentinels' monitor line against the
    master, the quorum against the sentinels, and every bo_queue service's URLs, master
    name and dependencies against the sentinels and replicas."""
    services = compose["services"]
    by_role: dict[str, list[str]] = {}
    for name, service in services.items():
        by_role.setdefault(role(service), []).append(name)
    masters, replicas = by_role.get("master", []), by_role.get("replica", [])
    sentinels = by_role.get("sentinel", [])
    if len(masters) != 1:
        return [f"one Redis master expected, found {masters}"]
    problems = redis_problems(services, masters[0], replicas)
    more, master_name, nodes = sentinel_problems(services, masters[0], sentinels)
    problems += more
    for name in by_role.get("bo-queue", []):
        service = services[name]
        env = service["environment"]
        for variable in ("BO_QUEUE_REDIS_URL", "BO_QUEUE_RESULT_URL"):
            if sentinel_nodes(env[variable])[0] != nodes:
                problems.append(f"{name}: {variable} does not name the sentinels")
        if env.get("BO_QUEUE_SENTINEL_MASTER") != master_name:
            problems.append(f"{name}: BO_QUEUE_SENTINEL_MASTER is not {master_name!r}")
        healthy = {dep for dep, how in (service.get("depends_on") or {}).items()
                   if how.get("condition") == "service_healthy"}
        acks = int(env.get("BO_QUEUE_REPLICA_ACKS", 0))
        if not set(sentinels) <= healthy or len(healthy & set(replicas)) < acks:
            problems.append(f"{name}: starts before the sentinels and {acks} replica(s) are up")
    return problems


def test_ha_sentinels_replicas_and_services_fit_together(ha: dict[str, Any]) -> None:
    assert ha_problems(ha) == []
    roles = [role(service) for service in ha["services"].values()]
    assert roles.count("master") == 1 and roles.count("replica") == 2
    assert roles.count("sentinel") == 3


def test_ha_check_finds_what_does_not_fit(ha: dict[str, Any]) -> None:
    broken = copy.deepcopy(ha)
    services = broken["services"]
    services["api"]["environment"] = {**services["api"]["environment"],
                                      "BO_QUEUE_SENTINEL_MASTER": "other"}
    services["worker"]["depends_on"] = {  # the anchor's mapping is shared: a new one
        dep: how for dep, how in services["worker"]["depends_on"].items() if dep != "sentinel-3"}
    services["redis-replica-2"]["command"] = ["redis-server", "--replicaof", "elsewhere", "6379"]
    services["flower"]["environment"] = {
        **services["flower"]["environment"],
        "BO_QUEUE_RESULT_URL": "sentinel://sentinel-1:26379;sentinel://sentinel-2:26379/0"}
    script = services["sentinel-1"]["command"][-1]
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        services[name]["command"] = ["sh", "-c", script.replace("6379 2", "6379 1")]
    assert ha_problems(broken) == [
        "redis-replica-2: AOF with appendfsync always expected",
        "redis-replica-2 does not replicate redis-master 6379",
        "quorum 1 of 3 sentinels is not a majority",
        "worker: starts before the sentinels and 1 replica(s) are up",
        "flower: BO_QUEUE_RESULT_URL does not name the sentinels",
        "api: BO_QUEUE_SENTINEL_MASTER is not 'mymaster'",
    ]
    with pytest.raises(ValueError, match="not a sentinel"):
        sentinel_nodes("sentinel://h1:26379;redis://h2:6379/0")


def test_ha_runs_workers_two_beats_flower_and_the_api(ha: dict[str, Any]) -> None:
    parser = build_parser()
    commands = {name: parser.parse_args(service["command"][1:])
                for name, service in ha["services"].items() if role(service) == "bo-queue"}
    served = {q for args in commands.values() if args.command == "worker"
              for q in args.queues.split(",")}
    assert served >= {"bo", "default"}
    beats = [name for name, args in commands.items() if args.command == "beat"]
    assert len(beats) == 2  # one holds redbeat's lock; the same namespace, so the same lock
    assert len({ha["services"][name]["environment"]["BO_QUEUE_NAMESPACE"] for name in beats}) == 1
    assert {args.command for args in commands.values()} >= {"flower", "api", "metrics"}
    env = ha["services"]["worker"]["environment"]
    assert ha["services"]["api"]["environment"] == env
    flower = ha["services"]["flower"]["environment"]
    assert flower["BO_QUEUE_NAMESPACE"] == env["BO_QUEUE_NAMESPACE"]
    assert sentinel_nodes(env["BO_QUEUE_REDIS_URL"])[1] == "0"
    # scalable with --scale: a fixed container_name or host port would collide
    for name, args in commands.items():
        if args.command == "worker":
            assert "container_name" not in ha["services"][name]
            assert "ports" not in ha["services"][name]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_every_dependency_waited_for_has_a_healthcheck(path: Path) -> None:
    services = yaml.safe_load(path.read_text())["services"]
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on {dependency}, not a service"
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"


def service_settings(service: dict[str, Any]) -> dict[str, str]:
    """A service's BO_QUEUE_* variables, with `${VAR:-default}` read as its default (an
    empty default, such as Flower's password, as a value the operator set)."""
    env = service.get("environment") or {}
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", lambda m: m.group(1) or "set-by-operator",
                      str(v))
            for k, v in env.items() if k.startswith("BO_QUEUE_")}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_services_settings_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service's BO_QUEUE_* variables are settings bo_queue accepts together (an
    unknown name or a sentinel URL without its master would stop the service at start)."""
    services = yaml.safe_load(path.read_text())["services"]
    checked = 0
    for name, service in services.items():
        variables = service_settings(service)
        if not variables:
            continue
        for key in [k for k in os.environ if k.startswith("BO_QUEUE_")]:
            monkeypatch.delenv(key)
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
        settings = Settings.load()
        assert settings.redis_url == variables["BO_QUEUE_REDIS_URL"], name
        checked += 1
    assert checked >= 4
