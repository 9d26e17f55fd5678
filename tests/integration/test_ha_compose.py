"""docker-compose.ha.yml's Redis nodes and sentinels on real processes: the compose file's
own redis-server commands and sentinel script, with each service's name and port mapped to
localhost and a free port (Docker cannot run here; redis-server can). The sentinels must
accept their config, find the replicas and each other, answer with host names, and fail
over when the master dies."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis
import yaml

from bo_queue.testing import free_port, redis_server_binary, sentinel_dir, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
MASTER_NAME = "mymaster"


class Nodes:
    """The compose file's Redis services as local processes, by service name."""

    def __init__(self, services: dict[str, Any], workdir: str) -> None:
        self.services, self.workdir = services, workdir
        self.ports = {name: free_port() for name in services
                      if name.startswith(("redis-", "sentinel-"))}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _log(self, name: str) -> BinaryIO:
        return open(os.path.join(self.workdir, f"{name}.log"), "ab")

    def start_redis(self, name: str) -> None:
        command = list(self.services[name]["command"])
        if "--replicaof" in command:  # redis-master 6379 -> localhost and the master's port
            at = command.index("--replicaof")
            command[at + 1:at + 3] = ["localhost", str(self.ports[command[at + 1]])]
        at = command.index("--replica-announce-ip")
        command[at + 1] = "localhost"
        data = os.path.join(self.workdir, name)
        os.makedirs(data)
        args = [redis_server_binary(), *command[1:], "--port", str(self.ports[name]),
                "--bind", "127.0.0.1", "--dir", data, "--save", ""]
        with self._log(name) as log:
            self.processes[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def start_sentinel(self, name: str) -> None:
        shell, flag, script = self.services[name]["command"]
        conf = os.path.join(self.workdir, f"{name}.conf")
        script = (script.replace("$$", "$")  # compose's escape for a literal $
                  .replace("/tmp/sentinel.conf", conf)
                  .replace("port 26379", f"port {self.ports[name]}")
                  .replace("redis-master 6379", f"localhost {self.ports['redis-master']}")
                  .replace("exec redis-server", f"exec {redis_server_binary()}"))
        env = {**os.environ, "SENTINEL_NAME": "localhost"}
        with self._log(name) as log:
            self.processes[name] = subprocess.Popen(
                [shell, flag, script], env=env, stdout=log, stderr=subprocess.STDOUT)

    def client(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], socket_timeout=5, decode_responses=True)

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
                         for path in sorted(Path(self.workdir).glob("*.log")))

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    services = yaml.safe_load((ROOT / "docker-compose.ha.yml").read_text())["services"]
    workdir = sentinel_dir("bo-queue-ha-")
    running = Nodes(services, workdir)
    try:
        yield running
    finally:
        running.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _up(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_the_compose_sentinels_watch_the_replicas_and_fail_over(nodes: Nodes) -> None:
    replicas = ["redis-replica-1", "redis-replica-2"]
    sentinels = ["sentinel-1", "sentinel-2", "sentinel-3"]
    nodes.start_redis("redis-master")
    wait_until(lambda: _up(nodes.client("redis-master")), 10, what="the master")
    for name in replicas:
        nodes.start_redis(name)
    for name in replicas:
        wait_until(lambda n=name: _up(nodes.client(n)) and nodes.client(n).info(
            "replication")["master_link_status"] == "up", 30, what=f"{name} in sync")
    for name in sentinels:
        nodes.start_sentinel(name)
    try:
        for name in sentinels:
            sentinel = nodes.client(name)
            wait_until(lambda s=sentinel: _up(s) and len(s.sentinel_slaves(MASTER_NAME)) == 2
                       and len(s.sentinel_sentinels(MASTER_NAME)) == 2, 30,
                       what=f"{name} to find both replicas and the other sentinels")
            # announce-hostnames: names, not addresses, go out to clients
            assert sentinel.sentinel_get_master_addr_by_name(MASTER_NAME) == (
                "localhost", nodes.ports["redis-master"])
            assert sentinel.execute_command("SENTINEL", "CKQUORUM", MASTER_NAME).startswith(
                "OK 3 usable Sentinels")

        nodes.processes["redis-master"].kill()  # the master's host is lost
        replica_ports = {nodes.ports[name] for name in replicas}
        for name in sentinels:
            sentinel = nodes.client(name)
            wait_until(lambda s=sentinel: s.sentinel_get_master_addr_by_name(
                MASTER_NAME)[1] in replica_ports, 60, 0.2, what=f"{name} to name a new master")
        host, port = nodes.client("sentinel-1").sentinel_get_master_addr_by_name(MASTER_NAME)
        assert host == "localhost"
        promoted = redis.Redis(port=port, decode_responses=True)
        wait_until(lambda: promoted.info("replication")["role"] == "master", 30,
                   what="the promoted replica to take writes")
        assert promoted.set("after-failover", "1")
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n{nodes.logs()}") from exc
