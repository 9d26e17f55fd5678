"""A fork server for the suite's `bo-queue worker`, `beat` and `api` processes.

Every worker the tests start used to be a new interpreter that imported Celery, kombu,
pydantic and bo_queue (about 2 s of CPU), and a `bo` worker Ax and torch too (7-9 s more).
The suite starts about 190 of them, on 2 cores: that import was a third of its CPU. Here
one interpreter per pytest process imports those libraries once (`python -m
tests.forkserver`) and forks a child for each command; the child runs the same
`bo_queue.cli.main(...)` that `python -m bo_queue.cli` runs, with the command's
environment, working directory, log file and a session of its own, as `Popen` gives it.
What it skips is only the interpreter's start and those imports; every module a worker
imports from its settings (`workers.app`, the handler modules) is still imported in the
child, after its environment is set. The server imports nothing that reads the
environment. `TEST_FORK_SERVER=0` starts every process with exec instead.

Protocol: one JSON line per request on the server's stdin, one reply line on its stdout.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = ["-m", "bo_queue.cli"]  # the commands the server runs: bo_queue's own
# what every worker imports; no module here reads BO_QUEUE_* variables when imported
PRELOAD = (
    "celery", "celery.bin.celery", "celery.apps.worker", "celery.worker",
    "celery.concurrency.prefork", "celery.backends.redis", "celery.beat",
    "kombu.transport.redis", "redis", "pydantic", "bo_queue.client", "bo_queue.cli",
    "bo_queue.studies.engine",  # Ax, torch, BoTorch
    "uvicorn", "fastapi", "bo_queue.api.app",  # `bo-queue api` (an app factory)
)


class ForkedProcess:
    """What `subprocess.Popen` offers the tests (pid, poll, wait, signals, returncode)
    for a child of the fork server."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]) -> None:
        self.server = server
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.request(op="poll", pid=self.pid)["code"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # until polled it is at worst a zombie: the pid stays its
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The client side: starts the server on first use, one per pytest process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
            env.setdefault("OMP_NUM_THREADS", "1")  # as workers.app sets it, before torch
            env.setdefault("MKL_NUM_THREADS", "1")
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.forkserver"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, cwd=ROOT, env=env, start_new_session=True)
            self._read(self._process)  # {"ready": ...} once the imports are done
            atexit.register(self.close)
        return self._process

    @staticmethod
    def _read(process: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({process.poll()}); see its stderr")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, **request: Any) -> dict[str, Any]:
        with self._lock:
            process = self.start()
            assert process.stdin is not None
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            reply = self._read(process)
        if "error" in reply:
            raise RuntimeError(f"fork server: {reply['error']}")
        return reply

    def launch(self, args: list[str], env: Mapping[str, str], log: IO[bytes]
               ) -> ForkedProcess | subprocess.Popen[bytes]:
        """`args` as `Popen` takes them; a command other than bo_queue's is exec'd."""
        if args[:3] != [sys.executable, *PREFIX]:
            return subprocess.Popen(args, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        pid = self.request(op="spawn", argv=args, env=dict(env), cwd=os.getcwd(),
                           log=log.name)["pid"]
        return ForkedProcess(self, int(pid), args)

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                assert self._process.stdin is not None
                self._process.stdin.close()  # the server exits at end of input
                self._process.wait(10)
            self._process = None


def enabled() -> bool:
    return os.environ.get("TEST_FORK_SERVER", "1") != "0"


# ---- the server ---------------------------------------------------------------------

def _become(request: dict[str, Any]) -> None:
    """In the forked child: the environment, files and session `Popen` would have given."""
    os.setsid()
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    paths = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    for path in reversed(paths):  # as the interpreter puts PYTHONPATH first
        if path not in sys.path:
            sys.path.insert(0, path)
    sys.argv = [str(ROOT / "bo_queue" / "cli.py"), *request["argv"][3:]]


def serve() -> list[str] | None:
    """Answer requests until stdin closes (None); in a forked child, the command's argv."""
    import importlib

    started = time.process_time()
    for module in PRELOAD:
        importlib.import_module(module)
    threads = threading.active_count()
    if threads != 1:  # a fork copies only the calling thread: none may hold a lock
        raise RuntimeError(f"{threads} threads after the imports; cannot fork safely")
    gc.freeze()  # the children's collections skip what was imported here (and copy none of it)
    codes: dict[int, int] = {}
    out = sys.stdout.buffer
    out.write(json.dumps({"ready": True, "cpu_s": time.process_time() - started}).encode()
              + b"\n")
    out.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        reply: dict[str, Any]
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _become(request)
                argv: list[str] = request["argv"]
                return argv
            reply = {"pid": pid}
        elif request["op"] == "poll":
            pid = int(request["pid"])
            try:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
                reply = {"code": codes.get(pid)}
            except ChildProcessError:
                reply = {"error": f"{pid} is not a process this server started"}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    return None


if __name__ == "__main__":
    command = serve()
    if command is not None:  # the child: run the command, then exit as it would
        from bo_queue.cli import main

        sys.exit(main(command[3:]))
